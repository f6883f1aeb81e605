"""results.md (for people) and results.json (for tools) from the benchmarks' results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.common import BenchResult, fmt

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model(), "platform": platform.platform(),
            "python": platform.python_version()}


def build(results: list[BenchResult], *, started: dt.datetime, seconds: float, quick: bool,
          only: list[str], load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_at_start": [round(x, 2) for x in load_at_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "git_commit": git_commit(),
        "quick": quick,
        "only": only,
        "seconds": round(seconds, 1),
        "benchmarks": {r.name: r.to_json() for r in results},
    }


def table(results: list[BenchResult]) -> list[str]:
    lines = ["| benchmark | figure | median | p90 | n | unit |",
             "|---|---|---:|---:|---:|---|"]
    for r in results:
        if r.error is not None:
            lines.append(f"| {r.name} | FAILED: {r.error.splitlines()[-1]} | | | | |")
        for f in r.figures:
            lines.append(f"| {r.name} | {f.label} | {fmt(f.median)} | {fmt(f.p90)} | {f.n} "
                         f"| {f.unit} |")
    return lines


def markdown(doc: dict[str, Any], results: list[BenchResult]) -> str:
    m = doc["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (`make bench`); speed is measured here, never asserted "
        "in tests.",
        "",
        f"- Date: {doc['date']}",
        f"- Machine: {m['nproc']} CPUs (nproc; {m['cpus_available']} available), "
        f"{m['cpu_model']}; {m['platform']}; Python {m['python']}; load average "
        f"{m['loadavg_at_start'][0]} at start, {m['loadavg_at_end'][0]} at the end "
        "(anything else running on the machine skews the figures)",
        f"- Git commit: {doc['git_commit'] or 'unknown'}",
        f"- Mode: {'quick' if doc['quick'] else 'full'}; benchmarks: {', '.join(doc['only'])}; "
        f"total {doc['seconds']:.0f} s",
        "",
        "## Figures",
        "",
        "Median and 90th percentile (linear interpolation) over n samples.",
        "",
        *table(results),
        "",
        "## Notes and comparisons",
        "",
    ]
    for r in results:
        lines.append(f"### {r.name} ({r.seconds:.0f} s)")
        lines.append("")
        if r.error is not None:
            lines += ["```", r.error.rstrip(), "```", ""]
        # A benchmark's own markdown (a table per load level, say) comes first.
        if r.details.get("table"):
            lines += [*r.details["table"], ""]
        lines += [f"- {note}" for note in r.notes]
        brief = {k: v for k, v in r.details.items() if k not in ("runs", "table", "scale_out")}
        if brief:
            lines.append(f"- Details: `{json.dumps(brief, separators=(', ', ': '))}`")
        lines.append("")
    return "\n".join(lines)


def write(out_dir: Path, doc: dict[str, Any], results: list[BenchResult]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "results.md", out_dir / "results.json"
    md.write_text(markdown(doc, results), encoding="utf-8")
    js.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return md, js


def write_standalone(result: BenchResult, out_dir: Path) -> tuple[Path, Path]:
    """Replace this benchmark's part of results.json/results.md, keeping the others'
    (the header's date and commit stay those of the last full run; each standalone
    benchmark names the commit it measured in its notes or details)."""
    js = out_dir / "results.json"
    try:
        doc = json.loads(js.read_text())
    except (OSError, ValueError):
        doc = build([], started=dt.datetime.now().astimezone(), seconds=0.0, quick=False,
                    only=[], load_at_start=os.getloadavg())
    doc["benchmarks"][result.name] = result.to_json()
    if result.name not in doc.get("only", []):
        doc["only"] = [*doc.get("only", []), result.name]
    results = [BenchResult.from_json(name, body) for name, body in doc["benchmarks"].items()]
    return write(out_dir, doc, results)


def finish_standalone(result: BenchResult, out_dir: Path, save: bool) -> None:
    """A standalone run's end: its table and notes printed and, if ``save``, its section of
    the results files replaced."""
    print("\n".join(result.details["table"]))
    for note in result.notes:
        print(f"  - {note}")
    if save:
        md, js = write_standalone(result, out_dir)
        print(f"wrote {md} and {js}")
