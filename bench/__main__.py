"""``python -m bench [--only vad,text,...] [--quick] [--out DIR]``: run the benchmarks, print
their figures and write results.md and results.json (into bench/ unless ``--out``). With
``--only`` (and not ``--quick``) only those benchmarks' sections of the files are replaced."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

import structlog

from bench import report
from bench.common import BenchResult

# Name -> module, in running order: in-process model benchmarks first, then the system.
BENCHMARKS: dict[str, str] = {
    "vad": "bench.vad",
    "stt": "bench.stt",
    "tts": "bench.tts",
    "text": "bench.text",
    "voice": "bench.voice",
    "redis": "bench.redis_ingest",
    "failover": "bench.redis_failover",
    "agent_client": "bench.agent_client",
    "floors": "bench.floors",
    "pipeline": "bench.pipeline_load",
    "vad_alone": "bench.vad_alone",
    "faults": "bench.faults",
    "soak": "bench.soak",
}
DEFAULT_OUT = Path(__file__).resolve().parent


def _names(raw: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(BENCHMARKS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", type=_names, default=list(BENCHMARKS),
                        help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small n everywhere: checks the harness, not the speed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for results.md and results.json (default: bench/)")
    return parser.parse_args(argv)


def _terminated(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM as an exception, so every benchmark's finally stops the processes it started.
    raise SystemExit(128 + signum)


def run_one(name: str, quick: bool) -> BenchResult:
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    try:
        module = importlib.import_module(BENCHMARKS[name])
        result: BenchResult = module.run(quick)
    except Exception:
        result = BenchResult(name, error=traceback.format_exc(limit=8))
    result.seconds = time.perf_counter() - started
    # Other work on the machine shows here: this run alone keeps it near 1 on most benchmarks.
    result.details["git_commit"] = report.git_commit()
    result.details["loadavg_1m_before_after"] = [round(load_before, 2),
                                                 round(os.getloadavg()[0], 2)]
    return result


def print_result(result: BenchResult) -> None:
    lines = report.table([result])
    print(f"\n== {result.name} ({result.seconds:.0f} s)")
    print("\n".join(lines))
    if result.error:
        print(result.error, file=sys.stderr)
    for note in result.notes:
        print(f"  - {note}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    # The models' own info lines (loads, warm-ups) would bury the figures; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started_at, load_at_start = dt.datetime.now().astimezone(), os.getloadavg()
    t0 = time.perf_counter()
    order = [n for n in BENCHMARKS if n in args.only]
    results: list[BenchResult] = []
    for name in order:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", flush=True)
        result = run_one(name, args.quick)
        results.append(result)
        print_result(result)
    if set(order) == set(BENCHMARKS) or args.quick:
        doc = report.build(results, started=started_at, seconds=time.perf_counter() - t0,
                           quick=args.quick, only=order, load_at_start=load_at_start)
        md, js = report.write(args.out, doc, results)
    else:
        # A subset replaces only its own sections: the last full run's figures stay.
        for result in results:
            md, js = report.write_standalone(result, args.out)
    print(f"\nwrote {md} and {js} ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
