"""``vad``: real-time streams per core through VadEngine, via vad_worker.bench_vad.run."""

from __future__ import annotations

from typing import Any

from bench.common import BenchResult, fmt, median

NAME = "vad"
BATCH_SIZES = (1, 16, 64, 256)
# shared/docs/vad-benchmark.md, JIT model only, one pinned core (AMD EPYC, AVX-512).
PUBLISHED_JIT_STREAMS = {1: 170, 16: 892, 64: 1655, 256: 2029}
PUBLISHED_JIT_MS_PER_CALL = {1: 0.188, 16: 0.574, 64: 1.237, 256: 4.037}


def run(quick: bool) -> BenchResult:
    from vad_worker.batch_vad import BatchVad
    from vad_worker.bench_vad import model_seconds_per_call
    from vad_worker.bench_vad import run as bench_vad_run

    result = BenchResult(NAME)
    repeats, target = (1, 1_000) if quick else (3, 20_000)
    model = BatchVad(num_threads=1)
    raw: list[dict[str, Any]] = []
    for _ in range(repeats):
        out = bench_vad_run(BATCH_SIZES, frame_ms=30, target_windows=target, num_threads=1,
                            model=model)
        raw.append(out)
        for b in BATCH_SIZES:
            r = out[str(b)]
            assert isinstance(r, dict)
            result.figure(f"engine_streams_per_core_b{b}",
                          f"VadEngine real-time streams/core, batch {b}",
                          "streams").samples.append(float(r["streams_per_core"]))
    for b in BATCH_SIZES:
        for out in raw:
            r = out[str(b)]
            assert isinstance(r, dict)
            result.figure(f"model_streams_per_core_b{b}",
                          f"model-only streams/core, batch {b}",
                          "streams").samples.append(float(r["model_only_streams_per_core"]))
            result.figure(f"model_ms_per_call_b{b}", f"model-only time per call, batch {b}",
                          "ms").samples.append(float(r["model_only_ms_per_call"]))
    # The package's TorchScript graph on the same batches, alternating with the products so
    # both see the same machine.
    graph = BatchVad(num_threads=1, graph=True)
    ratios: dict[int, float] = {}
    for b in BATCH_SIZES:
        calls = max(20, (200 if quick else 2000) // b)
        g = [model_seconds_per_call(graph, b, calls) for _ in range(repeats)]
        p = [model_seconds_per_call(model, b, calls) for _ in range(repeats)]
        result.figure(f"graph_ms_per_call_b{b}", f"package graph time per call, batch {b}",
                      "ms").samples.extend(1000 * x for x in g)
        ratios[b] = round(median(g) / median(p), 2)
    result.details = {"repeats": repeats, "target_windows": target, "frame_ms": 30,
                      "torch_threads": 1, "model": model.kind,
                      "graph_over_products": ratios, "runs": raw}
    result.notes.append(
        f"The worker runs Silero's network as matrix products ({model.kind}; "
        "vad_worker/silero_net.py); the package's TorchScript graph on the same batches in "
        "the same run takes " + ", ".join(f"{r}x (batch {b})" for b, r in ratios.items())
        + " as long per call.")
    result.notes.append("n = repeats of vad_worker.bench_vad.run (30 ms frames re-chunked into "
                        "32 ms windows, sessions mixing speech and silence; 1 torch thread).")
    parts = []
    for b in BATCH_SIZES:
        measured = result.get(f"model_streams_per_core_b{b}").median
        engine = result.get(f"engine_streams_per_core_b{b}").median
        pub = PUBLISHED_JIT_STREAMS[b]
        parts.append(f"batch {b}: published {pub:,} / model-only {fmt(measured)} "
                     f"({measured / pub:.0%}) / engine {fmt(engine)} ({engine / pub:.0%})")
    result.notes.append("Against vad-benchmark.md's JIT figures (model-only, one pinned core, "
                        "AMD EPYC AVX-512; streams/core): " + "; ".join(parts) + ".")
    return result
