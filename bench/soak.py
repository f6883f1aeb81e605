"""``soak``: sessions connecting, talking and leaving for a long time; Redis ``used_memory``
and every process's RSS over time, and what is left in Redis after the last client.

    python -m bench.soak --minutes 30 --sessions 50

The system is the pipeline benchmark's (bench/pipeline_load.py: one replica of each stage,
the real Silero VAD, instant fake STT/agent/TTS). Sessions come in waves: every
``WAVE_S`` a wave of new sessions tops the number connected back up to ``--sessions``, each
wave living a random ``--min-life``..``--max-life`` seconds, streaming the benchmark's
spoken sentence and silence in real time (bench/pipeline_driver.py's client, run in this
process), then closing. Standalone runs replace this benchmark's section of
bench/results.md and results.json; ``python -m bench`` runs a short form.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import pipeline_fakes, report
from bench.common import BenchResult, fmt
from bench.pipeline_driver import Driver
from bench.pipeline_load import (
    API_KEY,
    FRAME_BYTES,
    WARMUP_S,
    Cycle,
    Pipeline,
    pipeline,
    rss_mb,
    turn_stats,
)
from bench.report import write_standalone
from shared import topology
from shared.session_record import CLOSED_KEYS_TTL_S

NAME = "soak"
WAVE_S = 2.0
# A wave holds at most this share of the target: sessions start and end spread out.
WAVE_SHARE = 0.1
# After the last client: every closed session's keys expire after CLOSED_KEYS_TTL_S.
AFTER_S = CLOSED_KEYS_TTL_S + 5
TABLE_ROWS = 16
HEX_ID = re.compile(r"[0-9a-f]{32}")
PARTITION = re.compile(r"\.\d+\}")


@dataclass
class Sample:
    t: float
    connected: int
    started: int
    redis_mb: float
    redis_keys: int
    reply_entries: int
    rss: dict[str, float]


@dataclass
class Churn:
    """Waves of sessions; each is a pipeline_driver.Driver run in this process."""

    system: Pipeline
    cycle: Cycle
    pcm_path: Path
    target: int
    life_s: tuple[float, float]
    rng: random.Random
    started: int = 0
    connected: int = 0
    connect_failures: int = 0
    outs: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self) -> None:
        n = min(self.target - self.connected, max(1, math.ceil(self.target * WAVE_SHARE)))
        if n <= 0:
            return
        ids = list(range(self.started, self.started + n))
        self.started += n
        self.connected += n
        # Whole cycles: a session's last utterance is followed by its silence, so it ends
        # (and is answered) before the session leaves.
        seconds = self.cycle.seconds * max(1, round(self.rng.uniform(*self.life_s)
                                                    / self.cycle.seconds))
        cfg = {"port": self.system.gateway_port, "path": f"/api/v1/ws?api_key={API_KEY}",
               "pcm_path": str(self.pcm_path), "frame_bytes": FRAME_BYTES,
               "last_voiced_frame": self.cycle.last_voiced_frame, "seconds": seconds,
               "session_ids": ids,
               # Starts spread over one wave interval, each at a random point of the cycle.
               "start_offsets_s": sorted(self.rng.uniform(0, WAVE_S) for _ in ids),
               "reply_text": pipeline_fakes.REPLY}
        task = asyncio.create_task(self._wave(cfg, n))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _wave(self, cfg: dict[str, Any], n: int) -> None:
        driver = Driver(cfg)
        try:
            await driver.connect_all()
            self.connect_failures += driver.connect_failures
            t0 = time.monotonic()
            await driver.stream(t0)
            await driver.drain()
            self.outs.append(driver.results(t0))
        finally:
            driver.close_all()
            self.connected -= n


async def redis_figures(r: aioredis.Redis) -> tuple[float, int]:
    mem = await r.info("memory")
    return int(mem["used_memory"]) / 2**20, int(await r.dbsize())


async def reply_entries(r: aioredis.Redis) -> int:
    """Entries in the reply partitions: they grow to ``REPLY_MAXLEN`` each, then stay."""
    async with r.pipeline(transaction=False) as p:
        for stream in topology.reply_streams():
            p.xlen(stream)
        return sum(int(n) for n in await p.execute())


async def key_kinds(r: aioredis.Redis) -> dict[str, int]:
    """Keys left, by shape: session ids and partition numbers folded."""
    kinds: Counter[str] = Counter()
    async for key in r.scan_iter(count=1000):
        kinds[PARTITION.sub(".N}", HEX_ID.sub("SID", key.decode()))] += 1
    return dict(sorted(kinds.items()))


async def soak(seconds: float, target: int, life_s: tuple[float, float],
               sample_s: float, seed: int) -> dict[str, Any]:
    commit = report.git_commit()  # at the start: the tree may move during a long run
    cycle = Cycle.make()
    rng = random.Random(seed)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="xrx-soak-") as d, pipeline() as system:
        pcm_path = Path(d) / "cycle.pcm"
        pcm_path.write_bytes(cycle.pcm)
        r = aioredis.from_url(system.redis.url)
        pids = {**system.pids(), "fakes": system.fakes.pid, "bench (clients)": os.getpid()}
        churn = Churn(system, cycle, pcm_path, target, life_s, rng)
        t0 = time.monotonic()
        next_sample = t0
        try:
            while (now := time.monotonic()) < t0 + seconds:
                churn.spawn()
                if now >= next_sample:
                    mb, n_keys = await redis_figures(r)
                    samples.append(Sample(now - t0, churn.connected, churn.started, mb, n_keys,
                                          await reply_entries(r), {k: v for k, p in pids.items()
                                           if (v := rss_mb(p)) is not None}))
                    next_sample += sample_s
                await asyncio.sleep(WAVE_S)
            # The last waves finish their lives; nothing new starts.
            await asyncio.gather(*list(churn.tasks))
            ended = time.monotonic()
            mb_end, keys_end = await redis_figures(r)
            await asyncio.sleep(AFTER_S)
            mb_after, keys_after = await redis_figures(r)
            rss_after = {k: v for k, p in pids.items() if (v := rss_mb(p)) is not None}
            kinds_after = await key_kinds(r)
            replies_after = await reply_entries(r)
        finally:
            for task in list(churn.tasks):
                task.cancel()
            await r.aclose()
    return {"git_commit": commit, "seconds": seconds, "target": target,
            "life_s": list(life_s), "seed": seed,
            "sessions": churn.started, "connect_failures": churn.connect_failures,
            "drain_s": round(ended - t0 - seconds, 1),
            "turns": {k: v for k, v in turn_stats(churn.outs, WARMUP_S).items()
                      if k != "latencies_ms"},
            "latencies_ms": turn_stats(churn.outs, WARMUP_S)["latencies_ms"],
            "samples": [s.__dict__ for s in samples],
            "at_end": {"redis_mb": round(mb_end, 2), "redis_keys": keys_end},
            "after_last_client": {"wait_s": AFTER_S, "redis_mb": round(mb_after, 2),
                                  "redis_keys": keys_after, "keys": kinds_after,
                                  "reply_entries": replies_after,
                                  "rss": {k: round(v, 1) for k, v in rss_after.items()}}}


# --- report ------------------------------------------------------------------------------------

def steady(samples: list[dict[str, Any]], fraction: float = 0.2) -> tuple[list[dict[str, Any]],
                                                                          list[dict[str, Any]]]:
    """The first and last ``fraction`` of the samples past the ramp-up (the first fifth)."""
    past_ramp = samples[len(samples) // 5:] or samples
    k = max(1, int(len(past_ramp) * fraction))
    return past_ramp[:k], past_ramp[-k:]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def table(run: dict[str, Any]) -> list[str]:
    samples = run["samples"]
    names = sorted({k for s in samples for k in s["rss"]}, key=lambda n: (n == "redis-server", n))
    step = max(1, len(samples) // TABLE_ROWS)
    lines = [f"Soak: {run['seconds'] / 60:.0f} min, about {run['target']} sessions connected, "
             f"each living {run['life_s'][0]:.0f}-{run['life_s'][1]:.0f} s: "
             f"{run['sessions']} sessions, {run['turns']['lost']} of {run['turns']['turns']} "
             f"turns lost, {run['turns']['duplicated']} duplicated, p50 first audio "
             f"{fmt(run['turns']['p50_ms'])} ms, p99 {fmt(run['turns']['p99_ms'])} ms, "
             f"{run['connect_failures']} connect failures.", "",
             "| t min | connected | sessions so far | Redis used_memory MB | Redis keys | "
             "reply entries | " + " | ".join(f"{n} RSS MB" for n in names) + " |",
             "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names)]
    rows = samples[::step]
    if samples and rows[-1] is not samples[-1]:
        rows.append(samples[-1])
    for s in rows:
        lines.append(f"| {s['t'] / 60:.1f} | {s['connected']} | {s['started']} | "
                     f"{s['redis_mb']:.1f} | {s['redis_keys']} | {s['reply_entries']} | "
                     + " | ".join(fmt(s["rss"].get(n, math.nan)) for n in names) + " |")
    after = run["after_last_client"]
    lines.append(f"| {after['wait_s']} s after the last client | 0 | {run['sessions']} | "
                 f"{after['redis_mb']:.1f} | {after['redis_keys']} | "
                 f"{after['reply_entries']} | "
                 + " | ".join(fmt(after["rss"].get(n, math.nan)) for n in names) + " |")
    first, last = steady(samples)

    def drift(get: Any) -> float:
        return mean([get(s) for s in last]) - mean([get(s) for s in first])

    redis_drift = drift(lambda s: s["redis_mb"])
    rss_drift = ", ".join(f"{n} {drift(lambda s, n=n: s['rss'].get(n, math.nan)):+.1f} MB"
                          for n in names)
    kinds = ", ".join(f"`{k}` x{v}" for k, v in after["keys"].items()) or "none"
    lines += ["", "Drift over the steady part (mean of its last fifth minus its first fifth): "
              f"Redis {redis_drift:+.1f} MB; {rss_drift}.", "",
              f"Keys left {after['wait_s']} s after the last client: {kinds}."]
    return lines


def result_from(run: dict[str, Any]) -> BenchResult:
    result = BenchResult(NAME)
    samples = run["samples"]
    first, last = steady(samples)
    result.figure("redis_used_memory_mb", "Redis used_memory during the soak", "MB").samples = [
        round(s["redis_mb"], 2) for s in samples]
    result.figure("redis_drift_mb", "Redis used_memory drift over the steady part",
                  "MB").samples = [round(mean([s["redis_mb"] for s in last])
                                         - mean([s["redis_mb"] for s in first]), 2)]
    for name in ("gateway", "vad-worker-1", "stt-bridge-1", "agent-bridge-1", "tts-bridge-1"):
        series = [s["rss"][name] for s in samples if name in s["rss"]]
        if series:
            result.figure(f"rss_mb_{name}", f"{name} RSS during the soak", "MB").samples = [
                round(x, 1) for x in series]
    result.figure("first_audio_ms", "end of speech -> first audio during the soak",
                  "ms").samples = [round(x, 2) for x in run["latencies_ms"]]
    result.figure("turns_lost", f"turns lost (of {run['turns']['turns']})",
                  "turns").samples = [run["turns"]["lost"]]
    result.figure("redis_keys_after", "Redis keys left after the last client",
                  "keys").samples = [run["after_last_client"]["redis_keys"]]
    result.details.update({
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **{k: v for k, v in run.items() if k not in ("samples", "latencies_ms")},
        "table": table(run)})
    result.notes += [
        f"Measured at commit {result.details['git_commit']} on this shared 2-core machine. "
        "The pipeline benchmark's system (one replica of each stage, real Silero VAD, instant "
        "fake STT/agent/TTS); the clients are bench/pipeline_driver.py's, run in the "
        "benchmark's own process (`bench (clients)`).",
        f"Every {WAVE_S:.0f} s a wave of new sessions (at most {WAVE_SHARE:.0%} of the target) "
        "tops the number connected back up; each session streams the spoken sentence and "
        "silence in real time for its wave's life, then closes. RSS and Redis `used_memory` "
        "sampled through the run; the last row is after every client left and the closed "
        f"sessions' keys expired ({CLOSED_KEYS_TTL_S} s).",
    ]
    return result


# --- entry points ------------------------------------------------------------------------------

def run_soak(seconds: float, target: int, life_s: tuple[float, float], sample_s: float,
             seed: int) -> BenchResult:
    started = time.perf_counter()
    try:
        import uvloop

        run = uvloop.run(soak(seconds, target, life_s, sample_s, seed))
    except ImportError:
        run = asyncio.run(soak(seconds, target, life_s, sample_s, seed))
    result = result_from(run)
    result.seconds = time.perf_counter() - started
    return result


def run(quick: bool) -> BenchResult:
    """``python -m bench``'s short form: 90 s (45 s quick) of 10 sessions living 10-30 s. It
    shows the harness works and what is left behind; drift needs the long run."""
    return run_soak(45.0 if quick else 90.0, 10, (10.0, 30.0), 5.0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=50, help="sessions connected at once")
    parser.add_argument("--min-life", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-life", type=float, default=60.0, help="seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_soak(60 * args.minutes, args.sessions, (args.min_life, args.max_life),
                      args.sample, args.seed)
    print("\n".join(result.details["table"]))
    for note in result.notes:
        print(f"  - {note}")
    print(json.dumps({k: v for k, v in result.details.items() if k != "table"}, indent=1))
    if not args.no_write:
        md, js = write_standalone(result, args.out)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
