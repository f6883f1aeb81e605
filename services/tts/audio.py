"""PCM helpers: sample conversion, resampling and framing for the wire."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import soxr

BYTES_PER_SAMPLE = 2


def float_to_pcm16(samples: np.ndarray, in_rate: int, out_rate: int) -> bytes:
    """Float mono in [-1, 1] at ``in_rate`` to s16le at ``out_rate``."""
    if in_rate != out_rate:
        samples = soxr.resample(samples.astype(np.float32), in_rate, out_rate, quality="HQ")
    scaled = np.clip(samples, -1.0, 1.0) * 32767.0
    return np.round(scaled).astype("<i2").tobytes()


def chunk_size(sample_rate: int, chunk_ms: int) -> int:
    """Bytes in one wire chunk: at most ``chunk_ms`` of audio, whole samples only."""
    return max(1, sample_rate * chunk_ms // 1000) * BYTES_PER_SAMPLE


def iter_chunks(pcm: bytes, size: int) -> Iterator[bytes]:
    for offset in range(0, len(pcm), size):
        yield pcm[offset:offset + size]


def duration_s(n_bytes: int, sample_rate: int) -> float:
    return n_bytes / (sample_rate * BYTES_PER_SAMPLE)


class PcmStream:
    """s16le mono arriving in arbitrary pieces (a provider's network chunks, which may split a
    sample) -> whole samples at ``out_rate``, resampled statefully so the joins are seamless."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._carry = b""
        self._resampler = (soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16",
                                               quality="HQ")
                           if in_rate != out_rate else None)

    def feed(self, data: bytes, last: bool = False) -> bytes:
        data = self._carry + data
        whole = len(data) - len(data) % BYTES_PER_SAMPLE
        self._carry = data[whole:]
        if self._resampler is None:
            return data[:whole]
        samples = np.frombuffer(data[:whole], dtype="<i2")
        return bytes(self._resampler.resample_chunk(samples, last=last).astype("<i2").tobytes())

    def flush(self) -> bytes:
        return self.feed(b"", last=True)
