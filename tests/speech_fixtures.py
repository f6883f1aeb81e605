"""Speech test audio made at run time: PCM s16le mono 16 kHz, the format every stage takes.

Piper with sampling noise off gives the same bytes on every run, and Whisper transcribes its
sentences exactly, so tests can assert on transcripts without committing audio files.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from services.tts.piper_provider import PiperSynthesizer, load_piper_voice

SAMPLE_RATE = 16_000

# What the tests and benchmarks say to the system, plus a few more orders: the word error
# rate over these is the benchmark's accuracy check on the STT settings.
SENTENCES = (
    "Can I have a large pepperoni?",
    "I would like a large pepperoni pizza and a small veggie pizza, please.",
    "What is on the menu",
    "I want a small pepperoni",
    "Can I get extra cheese?",
    "I would like a large pepperoni",
    "and a small veggie pizza",
    "Hello there",
    "I would like a large pepperoni pizza with extra cheese please",
    "I would like to book a table for two tonight.",
    "Please remind me to call my mother tomorrow morning.",
    "What is the weather like in Paris today?",
    "Deterministic, please.",
    "Yes.",
    "No thanks, that is all.",
    "How much is a medium Hawaiian?",
    "Add a garlic bread and two cokes to my order.",
    "Cancel my order.",
)


@lru_cache(maxsize=1)
def _synthesizer() -> PiperSynthesizer:
    return PiperSynthesizer(load_piper_voice(), sample_rate=SAMPLE_RATE, deterministic=True)


@lru_cache(maxsize=128)
def synthesize_pcm16k(text: str) -> bytes:
    """``text`` spoken by the bundled piper voice, deterministic, as 16 kHz s16le."""
    return _synthesizer().render(text)


def _samples(ms: int) -> int:
    return SAMPLE_RATE * ms // 1000


def silence(ms: int) -> bytes:
    return bytes(2 * _samples(ms))


def noise(ms: int, amplitude: int = 1000, seed: int = 0) -> bytes:
    """Uniform white noise in [-amplitude, amplitude]; the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(-amplitude, amplitude, size=_samples(ms), endpoint=True)
    return samples.astype("<i2").tobytes()
