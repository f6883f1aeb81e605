"""Cut a session's arbitrary-sized PCM frames into the fixed windows Silero VAD needs.

Clients send 16 kHz s16le mono frames of whatever size their audio stack produces (480,
4096, 333 samples...). Silero only accepts 512-sample windows, so whatever does not fill a
window is carried over to the next frame of the same session.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512
SAMPLE_BYTES = 2
WINDOW_BYTES = WINDOW_SAMPLES * SAMPLE_BYTES


def rechunk(remainder: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Split ``remainder + data`` into whole windows and the new remainder.

    Returns the windows as s16le bytes (``WINDOW_BYTES`` each) and the bytes left over,
    always shorter than one window. A stray odd byte also stays in the remainder, so a frame
    cut in the middle of a sample is reassembled rather than shifting every later sample.
    """
    buf = remainder + data if remainder else data
    n_windows = len(buf) // WINDOW_BYTES
    cut = n_windows * WINDOW_BYTES
    windows = [buf[i : i + WINDOW_BYTES] for i in range(0, cut, WINDOW_BYTES)]
    return windows, bytes(buf[cut:])


def pcm_to_float(window: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1), the scaling Silero was trained with."""
    return np.frombuffer(window, dtype="<i2").astype(np.float32) / np.float32(32768.0)
