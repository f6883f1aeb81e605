"""Checks on the utterances clients send, before any decoding is paid for."""

from __future__ import annotations

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2
MAX_UTTERANCE_S = 60.0
MAX_UTTERANCE_BYTES = int(MAX_UTTERANCE_S * SAMPLE_RATE) * BYTES_PER_SAMPLE


def utterance_problem(pcm: bytes) -> str | None:
    """Why ``pcm`` cannot be transcribed, or ``None`` when it can."""
    if not pcm:
        return "empty"
    if len(pcm) % BYTES_PER_SAMPLE:
        return "odd byte length: not whole s16le samples"
    if len(pcm) > MAX_UTTERANCE_BYTES:
        return f"longer than {MAX_UTTERANCE_S:.0f} s"
    return None


def duration_s(pcm: bytes) -> float:
    return len(pcm) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
