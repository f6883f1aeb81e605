"""``vad_alone``: how many real-time sessions one vad-worker serves per core, through Redis.

One vad-worker (real Silero, batching, checkpoints and all) and its own redis-server, nothing
else of the pipeline: this process plays the gateway. It opens N sessions as the gateway does
(``gateway.sessions.open_session``) and writes their audio as the gateway's audio ingest does
(``topology.send_audio``: one entry per partition holding what each session sent since the
last write, as often as the gateway's pacing says for N sessions, the partitions trimmed by
age), each session streaming the load
benchmark's sentence and silence in 30 ms frames on an absolute clock. It reads what the VAD
writes to the STT stage and times each utterance from the write that carried its last voiced
frame to its entry there: the VAD's end-of-speech wait (``VAD_SILENCE_MS``) plus everything
the worker adds. A level keeps up when no utterance is lost, no audio is shed as late
(``xrx_vad_audio_shed_total``) and the tail stays near the one-session floor.

    python -m bench.vad_alone --sessions 1,250,500,750,1000 --seconds 30

Sessions per core = N / the vad-worker's CPU (% of one core / 100) over the steady window.
Standalone runs replace this benchmark's section of bench/results.md and results.json;
``python -m bench`` runs a short form (N=1 and N=50).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import redis.asyncio as aioredis

from bench import report
from bench.common import BenchResult, fmt
from bench.pipeline_load import FRAME_BYTES, Cycle, cpu_s, pct, rss_mb, settle_pids
from gateway.sessions import close_session, open_session
from shared import keys, topology
from shared.config import Settings
from shared.keys import Stage
from shared.messages import SpeechKind, UtteranceIn
from shared.redis_io import time_ms
from tests.harness import Proc, RedisServer, free_port, wait_ready

NAME = "vad_alone"
FRAME_S = 0.030
GATEWAY_ID = "bench-vad-alone"
SESSION_TTL_S = 3600  # no refresh needed within a run
KEEP_MS = 6000  # what the gateway keeps of a partition: 2 * VAD_MAX_LAG_MS by default
LOSS_S = 5.0  # an utterance with no entry at the STT stage this long after its end is lost
WARMUP_S = 2.0
READ_BLOCK_MS = 200
SHED = re.compile(r"^xrx_vad_audio_shed_total\s+([-+0-9.eE]+)$", re.MULTILINE)


@dataclass
class Session:
    sid: str
    start_s: float  # offset of its stream from the common start
    sent: int = 0  # frames written so far
    ends: list[float] = field(default_factory=list)  # wall time its utterances' ends were written
    found: list[float] = field(default_factory=list)  # wall time their STT entries were read


async def write_audio(r: aioredis.Redis, sessions: list[Session], cycle: Cycle, t0: float,
                      stop_at: float) -> None:
    """The gateway's audio ingest, driven by a clock instead of clients: each session's
    frames due by then, in one pipeline, as often as the gateway's pacing says for this
    many sessions (shared/pacing.py)."""
    interval = Settings().audio_pacing.interval_s(len(sessions))
    frames_per_cycle = len(cycle.pcm) // FRAME_BYTES
    redis_ms: int | None = None
    tick = 0
    while (now := time.monotonic()) < stop_at:
        batch: dict[str, bytes] = {}
        ended: list[Session] = []
        for s in sessions:
            due = int((now - t0 - s.start_s) / FRAME_S) + 1
            if due <= s.sent:
                continue
            chunks = []
            for k in range(s.sent, due):
                i = k % frames_per_cycle
                chunks.append(cycle.pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES])
                if i == cycle.last_voiced_frame:
                    ended.append(s)
            s.sent = due
            batch[s.sid] = b"".join(chunks)
        if batch:
            keep_after = None if redis_ms is None else redis_ms - KEEP_MS
            async with r.pipeline(transaction=False) as p:
                topology.send_audio(p, batch, keep_after)
                p.time()
                *_, now_redis = await p.execute()
            redis_ms = time_ms(now_redis)
            written = time.time()
            for s in ended:
                s.ends.append(written)
        tick += 1
        await asyncio.sleep(max(0.0, t0 + tick * interval - time.monotonic()))


async def read_utterances(r: aioredis.Redis, by_sid: dict[str, Session]) -> None:
    """Every utterance the VAD hands to the STT stage, timed as it is read (until cancelled)."""
    last = {keys.stage_partition(Stage.STT_BRIDGE, n): b"0-0"
            for n in range(topology.partitions())}
    while True:
        resp = await r.xread(last, block=READ_BLOCK_MS)  # type: ignore[arg-type]
        seen = time.time()
        for stream, entries in cast(list[tuple[bytes, list[tuple[bytes, Any]]]], resp or []):
            last[stream.decode()] = entries[-1][0]
            for _, fields in entries:
                entry = UtteranceIn.decode(fields)
                s = by_sid.get(entry.session_id)
                if s is not None and entry.kind == SpeechKind.UTTERANCE:
                    s.found.append(seen)


def utterance_stats(sessions: list[Session], t_first: float, t_last: float) -> dict[str, Any]:
    """Each utterance ending in [t_first, t_last] (wall time) matched to the first STT entry
    of its session read after it; unmatched ones are lost."""
    lat: list[float] = []
    lost = extra = 0
    for s in sessions:
        found = sorted(s.found)
        j = 0
        for end in s.ends:
            while j < len(found) and found[j] < end:
                j += 1  # an entry read before this end answers an earlier one
            counted = t_first <= end <= t_last
            if j < len(found) and found[j] - end <= LOSS_S:
                if counted:
                    lat.append(1000 * (found[j] - end))
                j += 1
            elif counted:
                lost += 1
        extra += max(0, len(found) - len(s.ends))
    return {"utterances": len(lat) + lost, "lost": lost, "extra_entries": extra,
            "latencies_ms": lat, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99)}


async def shed_total(client: httpx.AsyncClient, port: int) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    m = SHED.search(text)
    return float(m.group(1)) if m else 0.0


async def run_level(redis_url: str, vad: Proc, health_port: int, redis_pid: int, cycle: Cycle,
                    n: int, seconds: float) -> dict[str, Any]:
    r = aioredis.from_url(redis_url)
    reader = aioredis.from_url(redis_url)
    assert vad.proc is not None
    pids = {"vad-worker": vad.proc.pid, "redis-server": redis_pid, "driver": os.getpid()}
    sessions = [Session(uuid.uuid4().hex, cycle.seconds * i / n) for i in range(n)]
    try:
        for s in sessions:
            await open_session(r, s.sid, GATEWAY_ID, SESSION_TTL_S)
        async with httpx.AsyncClient() as client:
            shed0 = await shed_total(client, health_port)
            t0 = time.monotonic() + 0.5
            wall0 = time.time() + 0.5
            stop_at = t0 + seconds
            read = asyncio.create_task(read_utterances(reader, {s.sid: s for s in sessions}))
            write = asyncio.create_task(write_audio(r, sessions, cycle, t0, stop_at))
            # Steady part: every session streaming (the last starts a cycle after the first).
            await asyncio.sleep(max(0.0, t0 + cycle.seconds + 0.5 - time.monotonic()))
            c0, m0 = {k: cpu_s(p) for k, p in pids.items()}, time.monotonic()
            rss: dict[str, float] = {}
            while time.monotonic() < stop_at - 1.0:
                for k, p in pids.items():
                    rss[k] = max(rss.get(k, 0.0), rss_mb(p) or 0.0)
                await asyncio.sleep(1.0)
            c1, m1 = {k: cpu_s(p) for k, p in pids.items()}, time.monotonic()
            await write
            await asyncio.sleep(LOSS_S)
            read.cancel()
            try:
                await read
            except asyncio.CancelledError:
                pass
            shed = await shed_total(client, health_port) - shed0
    finally:
        for s in sessions:
            await close_session(r, s.sid)
        await r.aclose()
        await reader.aclose()
    cpu = {k: 100 * ((c1[k] or 0.0) - (c0[k] or 0.0)) / (m1 - m0) for k in pids}
    # Utterances whose end came past the warm-up and early enough to be answered in the run.
    stats = utterance_stats(sessions, wall0 + WARMUP_S, wall0 + seconds - 1.0)
    return {"n": n, **stats, "shed_entries": shed,
            "cpu_pct": {k: round(v, 1) for k, v in cpu.items()},
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "sessions_per_core": 100 * n / cpu["vad-worker"] if cpu["vad-worker"] > 0
            else math.nan,
            "steady_window_s": round(m1 - m0, 1)}


async def run_levels(levels: list[int], seconds: float) -> list[dict[str, Any]]:
    cycle = Cycle.make()
    redis = RedisServer()
    vad: Proc | None = None
    rows = []
    try:
        redis.start()
        assert redis.proc is not None
        port = free_port()
        vad = Proc("vad-worker", {"REDIS_URL": redis.url, "HEALTH_PORT": str(port),
                                  "WORKER_ID": "vad-worker-1"}, name="vad-worker-1")
        vad.start(wait_for_port=port, timeout=120)
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", 120)
        for n in levels:
            assert vad.proc is not None
            # The previous level's sessions closed and their backlog gone.
            await settle_pids({"vad-worker": vad.proc.pid})
            print(f"  N={n} ...", flush=True)
            row = await run_level(redis.url, vad, port, redis.proc.pid, cycle, n, seconds)
            print("  " + row_line(row), flush=True)
            rows.append(row)
    finally:
        if vad is not None:
            vad.terminate()
        redis.cleanup()
    return rows


def row_line(row: dict[str, Any]) -> str:
    return (f"N={row['n']}: {row['lost']} of {row['utterances']} utterances lost, "
            f"{row['shed_entries']:.0f} audio entries shed, p50 {fmt(row['p50_ms'])} ms, p99 "
            f"{fmt(row['p99_ms'])} ms, vad-worker {row['cpu_pct']['vad-worker']} % of a core "
            f"({fmt(row['sessions_per_core'])} sessions per core)")


def table(rows: list[dict[str, Any]]) -> list[str]:
    base = next((r["p50_ms"] for r in rows if r["n"] == 1), math.nan)
    lines = ["| N | utterances lost | audio entries shed | p50 ms | p99 ms | p99 - p50(N=1) ms | "
             "vad-worker CPU % | sessions per core | Redis CPU % | driver CPU % | "
             "vad-worker RSS MB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['lost']} of {r['utterances']} | {r['shed_entries']:.0f} | "
            f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['p99_ms'] - base)} | "
            f"{fmt(r['cpu_pct']['vad-worker'])} | {fmt(r['sessions_per_core'])} | "
            f"{fmt(r['cpu_pct']['redis-server'])} | {fmt(r['cpu_pct']['driver'])} | "
            f"{fmt(r['rss_mb'].get('vad-worker', math.nan))} |")
    return lines


def result_from(rows: list[dict[str, Any]], seconds: float) -> BenchResult:
    result = BenchResult(NAME)
    for r in rows:
        n = r["n"]
        result.figure(f"utterance_ms_n{n}", f"end of speech written -> utterance at the STT "
                      f"stage, N={n} (p99 {fmt(r['p99_ms'])})", "ms").samples = [
            round(x, 2) for x in r["latencies_ms"]]
        result.figure(f"utterances_lost_n{n}", f"utterances lost, N={n} (of {r['utterances']})",
                      "utterances").samples = [r["lost"]]
        result.figure(f"shed_n{n}", f"audio entries shed as late, N={n}",
                      "entries").samples = [r["shed_entries"]]
        result.figure(f"sessions_per_core_n{n}", f"vad-worker alone: real-time sessions per "
                      f"core, N={n}", "sessions").samples = [round(r["sessions_per_core"], 1)]
    lines = table(rows)
    result.details.update({
        "git_commit": report.git_commit(), "date": dt.datetime.now().astimezone().isoformat(
            timespec="seconds"), "seconds_per_level": seconds, "warmup_s": WARMUP_S,
        "runs": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in rows],
        "table": lines})
    result.notes += [
        f"Measured at commit {result.details['git_commit']}. One vad-worker (real Silero) and "
        "its redis-server; this process writes the audio as the gateway's ingest does "
        "(topology.send_audio at the gateway's pacing, one entry per partition) and reads the "
        "STT stage.",
        "Latency: the write carrying an utterance's last voiced frame -> its entry read at the "
        f"STT stage (the VAD's end-of-speech wait included); lost without one within "
        f"{LOSS_S:.0f} s. Sessions per core = N / (vad-worker CPU % / 100), psutil over the "
        "steady window; the driver (this process) and Redis are reported apart.",
    ]
    return result


def run(quick: bool) -> BenchResult:
    """``python -m bench``'s short form: N=1 and N=50 for 12 s (the levels that matter take
    minutes: ``python -m bench.vad_alone``)."""
    seconds = 12.0
    return result_from(asyncio.run(run_levels([1, 50], seconds)), seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vad_alone", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,250,500,750,1000",
                        help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="seconds each session streams per level")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    result = result_from(asyncio.run(run_levels(levels, args.seconds)), args.seconds)
    result.seconds = time.perf_counter() - started
    report.finish_standalone(result, args.out, save=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
