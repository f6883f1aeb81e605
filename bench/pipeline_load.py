"""``pipeline``: N real-time voice sessions through the project's own processes (gateway,
vad-worker, stt-bridge, agent-bridge, tts-bridge, one replica each; the real Silero VAD) behind
instant fake STT/agent/TTS services, all on this box; end of speech -> first audio back,
turns lost, CPU and memory per process and Redis, Redis ops/s. ``--scale-out`` instead adds a
second vad-worker and stt-bridge under load, then SIGTERMs the first vad-worker.

    python -m bench.pipeline_load --sessions 1,50,100,200,300,500 --seconds 30
    python -m bench.pipeline_load --scale-out --sessions 100 --seconds 60

Standalone runs replace this benchmark's section of bench/results.md and results.json (the
other benchmarks' figures stay); ``python -m bench`` runs the quick form (N=1 and N=20).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis.asyncio as aioredis

from bench import pipeline_fakes, report
from bench.common import BenchResult, fmt, step_samples
from shared.latency import Step
from tests.harness import ROOT, Proc, RedisServer, free_port, wait_port, wait_ready

NAME = "pipeline"
NAME_SCALE_OUT = "pipeline_scale_out"  # its own section, so either run keeps the other's
SENTENCE = "I would like a large pizza please"
SILENCE_MS = 1800  # between utterances: the VAD's end-of-speech wait plus the reply's playback
FRAME_BYTES = 960  # 30 ms of 16 kHz s16le
SPEECH_LEVEL = 328  # |sample| above -40 dBFS counts as speech when trimming piper's edges
API_KEY = "123456"
LOSS_S = 15.0
# The vad-worker's CPU_NICE here: the deployment gives it the larger CPU share (its request in
# deploy/k8s is 1 CPU against 100-250m for the others; cpu_shares in docker-compose.yml), and
# processes side by side on one box get that from their niceness (-2: about 1.5x the weight;
# -5 cost the other stages more where the cores were not full, README "Operations").
VAD_NICE = -2
WARMUP_S = 2.0  # a session's turns ending this early in its stream are not counted
SESSIONS_PER_DRIVER = 150
STAGES = ("vad-worker", "stt-bridge", "agent-bridge", "tts-bridge")
SAMPLE_S = 1.0
KILL_AFTER_READY_S = 10.0
KILL_BEFORE_END_S = 10.0
OWNED = re.compile(r"^(xrx_owned_\w+)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$")


# --- speech -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cycle:
    """One utterance and its trailing silence, repeated by every session."""

    pcm: bytes
    last_voiced_frame: int
    speech_s: float

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 32000

    @classmethod
    def make(cls) -> Cycle:
        from tests.speech_fixtures import silence, synthesize_pcm16k

        samples = np.frombuffer(synthesize_pcm16k(SENTENCE), dtype="<i2")
        loud = np.nonzero(np.abs(samples.astype(np.int32)) > SPEECH_LEVEL)[0]
        speech = samples[loud[0]:loud[-1] + 1].tobytes()
        pcm = speech + silence(SILENCE_MS)
        pcm += bytes(-len(pcm) % FRAME_BYTES)
        return cls(pcm, (len(speech) - 1) // FRAME_BYTES, len(speech) / 32000)


# --- the system under test --------------------------------------------------------------------

@dataclass
class Pipeline:
    """Redis, the fakes and the project's processes; ``start`` adds replicas later."""

    redis: RedisServer
    env: dict[str, str]
    fakes: subprocess.Popen[bytes]
    vad_nice: int | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_port(self) -> int:
        return int(self.env["GATEWAY_PORT"])

    def start(self, name: str, command: str) -> Proc:
        port = free_port()
        env = {**self.env, "HEALTH_PORT": str(port), "WORKER_ID": name}
        if command == "vad-worker" and self.vad_nice is not None:
            env["CPU_NICE"] = str(self.vad_nice)
        proc = Proc(command, env, name=name)
        self.procs[name] = proc  # first, so a process that fails to come up is stopped too
        self.health[name] = port
        proc.start(wait_for_port=self.gateway_port if command == "gateway" else port,
                   timeout=120)
        return proc

    def ready(self, name: str) -> None:
        port = self.gateway_port if name == "gateway" else self.health[name]
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)

    def pids(self) -> dict[str, int]:
        out = {name: p.proc.pid for name, p in self.procs.items()
               if p.proc is not None and p.proc.poll() is None}
        assert self.redis.proc is not None
        out["redis-server"] = self.redis.proc.pid
        return out

    def niceness(self) -> dict[str, int]:
        """Each process's niceness as it runs (CPU_NICE may not have been applied)."""
        out = {}
        for name, pid in self.pids().items():
            try:
                out[name] = psutil.Process(pid).nice()
            except psutil.Error:
                pass
        return out


@contextmanager
def pipeline(replicas: dict[str, int] | None = None, lease_ms: int | None = None,
             fakes_module: str = "bench.pipeline_fakes",
             vad_nice: int | None = None) -> Iterator[Pipeline]:
    replicas = replicas or {}
    redis = RedisServer()
    fakes: subprocess.Popen[bytes] | None = None
    system: Pipeline | None = None
    try:
        redis.start()
        fake_port = free_port()
        fakes = subprocess.Popen([sys.executable, "-m", fakes_module, "--port",
                                  str(fake_port)], cwd=ROOT)
        wait_port(fake_port)
        env = {"REDIS_URL": redis.url, "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(free_port()), "API_KEY": API_KEY, "TTS_CACHE_DIR": "",
               "MAX_FRAME_BYTES": "65536", **pipeline_fakes.env(fake_port)}
        if lease_ms is not None:
            env["LEASE_MS"] = str(lease_ms)
        system = Pipeline(redis, env, fakes, vad_nice)
        names = []
        for command in STAGES:
            for i in range(replicas.get(command, 1)):
                name = f"{command}-{i + 1}"
                system.start(name, command)
                names.append(name)
        system.start("gateway", "gateway")
        for name in [*names, "gateway"]:
            system.ready(name)
        yield system
    finally:
        if system is not None:
            for proc in reversed(list(system.procs.values())):
                proc.terminate()
        if fakes is not None:
            fakes.terminate()
            try:
                fakes.wait(10)
            except subprocess.TimeoutExpired:
                fakes.kill()
        redis.cleanup()


# --- measuring ------------------------------------------------------------------------------

def cpu_s(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def rss_mb(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return None


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else math.nan


class Sampler:
    """CPU seconds at the steady window's edges, RSS and Redis figures every SAMPLE_S."""

    def __init__(self, r: aioredis.Redis, pids: dict[str, int]) -> None:
        self.r, self.pids = r, pids
        self.rss: dict[str, float] = {}
        self.used_memory_mb = 0.0
        self.inst_ops: list[float] = []
        self.info_calls = 0

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.r.info("stats")
        cmds = await self.r.info("commandstats")
        self.info_calls += 2
        machine = psutil.cpu_times()
        return {"t": time.monotonic(), "cpu": {n: cpu_s(p) for n, p in self.pids.items()},
                "machine_busy": float(machine.user + machine.nice + machine.system + machine.irq
                                      + machine.softirq),
                "commands": int(stats["total_commands_processed"]), "own": self.info_calls,
                "cmdstats": {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
                             for k, v in cmds.items()}}

    async def sample(self) -> None:
        for name, pid in self.pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                self.rss[name] = max(self.rss.get(name, 0.0), mb)
        mem = await self.r.info("memory")
        stats = await self.r.info("stats")
        self.info_calls += 2
        self.used_memory_mb = max(self.used_memory_mb, int(mem["used_memory"]) / 2**20)
        self.inst_ops.append(float(stats["instantaneous_ops_per_sec"]))


def window(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """CPU (% of one core) per process and Redis ops/s between two snapshots."""
    secs = b["t"] - a["t"]
    cpu = {n: 100 * (b["cpu"][n] - a["cpu"][n]) / secs for n in a["cpu"]
           if a["cpu"][n] is not None and b["cpu"].get(n) is not None}
    ops = (b["commands"] - a["commands"] - (b["own"] - a["own"])) / secs
    top = []
    for cmd, (calls, usec) in b["cmdstats"].items():
        c0, u0 = a["cmdstats"].get(cmd, (0, 0.0))
        if calls > c0:
            top.append((cmd, (calls - c0) / secs, (usec - u0) / (calls - c0)))
    top.sort(key=lambda x: -x[1])
    # Everything else on the (shared) machine: its busy time minus this benchmark's processes.
    machine = 100 * (b["machine_busy"] - a["machine_busy"]) / secs
    return {"seconds": secs, "cpu": cpu, "ops": ops, "machine_busy_pct": machine,
            "others_pct": machine - sum(cpu.values()),
            "top_commands": [{"cmd": c, "per_s": round(n), "usec_per_call": round(u, 1)}
                             for c, n, u in top[:6]]}


# --- drivers ------------------------------------------------------------------------------------

@dataclass
class Drivers:
    procs: list[subprocess.Popen[str]]
    outs: list[Path]

    @property
    def pids(self) -> dict[str, int]:
        return {f"driver-{i + 1}": p.pid for i, p in enumerate(self.procs)}


def start_drivers(port: int, cycle: Cycle, pcm_path: Path, n: int, seconds: float,
                  n_drivers: int, tmp: Path) -> Drivers:
    procs, outs = [], []
    for d in range(n_drivers):
        ids = list(range(d, n, n_drivers))
        # Utterance ends spread evenly over one cycle, so turns do not arrive in waves.
        cfg = {"port": port, "path": f"/api/v1/ws?api_key={API_KEY}", "pcm_path": str(pcm_path),
               "frame_bytes": FRAME_BYTES, "last_voiced_frame": cycle.last_voiced_frame,
               "seconds": seconds, "session_ids": ids,
               "start_offsets_s": [cycle.seconds * i / n for i in ids],
               "reply_text": pipeline_fakes.REPLY}
        cfg_path, out = tmp / f"driver-{d}.json", tmp / f"driver-{d}-out.json"
        cfg_path.write_text(json.dumps(cfg))
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.pipeline_driver",
                                       str(cfg_path), str(out)], cwd=ROOT, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        outs.append(out)
    return Drivers(procs, outs)


async def drivers_ready(drivers: Drivers, timeout: float) -> None:
    for p in drivers.procs:
        assert p.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), timeout)
        if line.strip() != "ready":
            raise RuntimeError(f"driver {p.pid} did not connect: {line!r}")


def go(drivers: Drivers, t0: float) -> None:
    for p in drivers.procs:
        assert p.stdin is not None
        p.stdin.write(f"{t0}\n")
        p.stdin.flush()


async def drivers_done(drivers: Drivers, timeout: float) -> list[dict[str, Any]]:
    outs = []
    for p, path in zip(drivers.procs, drivers.outs, strict=True):
        code = await asyncio.wait_for(asyncio.to_thread(p.wait), timeout)
        if code != 0:
            raise RuntimeError(f"driver {p.pid} exited with {code}")
        outs.append(json.loads(path.read_text()))
    return outs


def stop_drivers(drivers: Drivers) -> None:
    for p in drivers.procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# --- one load level ----------------------------------------------------------------------------

def turn_stats(outs: list[dict[str, Any]], warmup_s: float,
               t_from: float = -math.inf, t_to: float = math.inf) -> dict[str, Any]:
    """Counted turns (past warm-up, ending in [t_from, t_to) seconds after the start)."""
    lat, lost, dup, total = [], 0, 0, 0
    for out in outs:
        for _sid, end, in_session, latency, texts, starts in out["turns"]:
            if in_session < warmup_s or not t_from <= end < t_to:
                continue
            total += 1
            if latency is None:
                lost += 1
            else:
                lat.append(1000 * latency)
            if texts > 1 or starts > 1:
                dup += 1
    return {"turns": total, "lost": lost, "duplicated": dup, "latencies_ms": lat,
            "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
            "max_ms": max(lat) if lat else math.nan}


def log_sizes(system: Pipeline) -> dict[str, int]:
    """Where each process's log ends now: a level reads its own lines from there."""
    return {name: proc.log_path.stat().st_size if proc.log_path.exists() else 0
            for name, proc in system.procs.items()}


def step_stats(system: Pipeline, since: dict[str, int]) -> dict[str, dict[str, float]]:
    """p50/p99 of each step of the spoken turns (shared/latency.py) the stages logged since
    ``since``: where the time to the first audio goes, stage by stage."""
    samples: dict[str, list[float]] = {}
    for name, proc in system.procs.items():
        if proc.log_path.exists():
            for step, found in step_samples(proc.log_path, since.get(name, 0)).items():
                samples.setdefault(step, []).extend(found)
    return {step.value: {"p50_ms": pct(samples[step.value], 50),
                         "p99_ms": pct(samples[step.value], 99)}
            for step in Step if samples.get(step.value)}


async def run_level(system: Pipeline, cycle: Cycle, pcm_path: Path, n: int, seconds: float,
                    warmup_s: float, tmp: Path) -> dict[str, Any]:
    n_drivers = max(1, math.ceil(n / SESSIONS_PER_DRIVER))
    logs_from = log_sizes(system)
    r = aioredis.from_url(system.redis.url)
    drivers = start_drivers(system.gateway_port, cycle, pcm_path, n, seconds, n_drivers, tmp)
    try:
        await drivers_ready(drivers, timeout=60 + n / 5)
        sampler = Sampler(r, {**system.pids(), **drivers.pids, "fakes": system.fakes.pid,
                              "bench": os.getpid()})
        t0 = time.monotonic() + 0.5
        go(drivers, t0)
        # Steady part: every session streaming (the last one starts a cycle after the first).
        steady_from, steady_to = t0 + cycle.seconds + 0.5, t0 + seconds
        await asyncio.sleep(max(0.0, steady_from - time.monotonic()))
        a = await sampler.snapshot()
        while time.monotonic() + SAMPLE_S < steady_to:
            await sampler.sample()
            await asyncio.sleep(SAMPLE_S)
        b = await sampler.snapshot()
        outs = await drivers_done(drivers, timeout=cycle.seconds + LOSS_S + 60)
    finally:
        stop_drivers(drivers)
        await r.aclose()
    w = window(a, b)
    project = [name for name in w["cpu"] if name == "gateway" or name.rsplit("-", 1)[0] in STAGES]
    project_pct = sum(w["cpu"][name] for name in project)
    redis_pct = w["cpu"].get("redis-server", math.nan)
    vad_pct = sum(v for k, v in w["cpu"].items() if k.startswith("vad-worker"))
    stats = turn_stats(outs, warmup_s)
    return {
        "n": n, **stats, "drivers": n_drivers,
        "connect_failures": sum(o["connect_failures"] for o in outs),
        "closed_during_run": sum(o["closed_during_run"] for o in outs),
        "driver_late_tick_max_ms": max(o["late_tick_max_ms"] for o in outs),
        "steady_window_s": round(w["seconds"], 1),
        "cpu_pct": {k: round(v, 1) for k, v in w["cpu"].items()},
        "project_plus_redis_cpu_pct": round(project_pct + redis_pct, 1),
        "cpu_pct_per_session": (project_pct + redis_pct) / n,
        "vad_sessions_per_core": 100 * n / vad_pct if vad_pct > 0 else math.nan,
        "driver_cpu_pct": round(sum(v for k, v in w["cpu"].items()
                                    if k.startswith("driver")), 1),
        "machine_busy_pct": round(w["machine_busy_pct"], 1),
        "other_processes_cpu_pct": round(w["others_pct"], 1),
        "rss_mb": {k: round(v, 1) for k, v in sampler.rss.items()},
        "redis_used_memory_mb": round(sampler.used_memory_mb, 1),
        "redis_ops_per_s": round(w["ops"]),
        "redis_instantaneous_ops_max": max(sampler.inst_ops, default=math.nan),
        "redis_top_commands": w["top_commands"],
        "steps": step_stats(system, logs_from),
    }


async def settle(system: Pipeline, max_s: float = 30.0) -> None:
    """Wait until the system is idle again (a backlog from an overloaded level drained)."""
    await settle_pids(system.pids(), max_s)


async def settle_pids(pids: dict[str, int], max_s: float = 30.0) -> None:
    """Wait until these processes together use under 15 % of a core, ``max_s`` at most."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        c0 = {n: cpu_s(p) or 0.0 for n, p in pids.items()}
        await asyncio.sleep(1.0)
        busy = sum((cpu_s(p) or 0.0) - c0[n] for n, p in pids.items())
        if busy < 0.15:
            return


async def run_levels(levels: list[int], seconds: float, warmup_s: float,
                     lease_ms: int | None, vad_nice: int | None) -> list[dict[str, Any]]:
    cycle = Cycle.make()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xrx-pipeline-") as d:
        tmp = Path(d)
        pcm_path = tmp / "cycle.pcm"
        pcm_path.write_bytes(cycle.pcm)
        with pipeline(lease_ms=lease_ms, vad_nice=vad_nice) as system:
            for n in levels:
                await settle(system)
                print(f"  N={n} ...", flush=True)
                row = await run_level(system, cycle, pcm_path, n, seconds, warmup_s, tmp)
                row["niceness"] = system.niceness()
                print("  " + row_line(row), flush=True)
                rows.append(row)
    return rows


def row_line(row: dict[str, Any]) -> str:
    return (f"N={row['n']}: {row['lost']} of {row['turns']} turns lost, p50 "
            f"{fmt(row['p50_ms'])} ms, p99 {fmt(row['p99_ms'])} ms, "
            f"{fmt(row['cpu_pct_per_session'])} % of a core per session, driver "
            f"{row['driver_cpu_pct']} %")


# --- scale-out -------------------------------------------------------------------------------

async def scrape_owned(client: httpx.AsyncClient, port: int) -> dict[str, float] | None:
    """Every ``xrx_owned_*`` sample a worker exposes ({metric{labels}: value}); None if the
    worker does not answer (stopped)."""
    try:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
    except httpx.HTTPError:
        return None
    out = {}
    for line in text.splitlines():
        m = OWNED.match(line.strip())
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def owned_total(sample: dict[str, float] | None) -> float:
    """Sessions a replica owns: ``xrx_owned_sessions`` if it has it, else the sum of whatever
    ``xrx_owned_*`` gauges it has (the stream layer may count partitions instead)."""
    if not sample:
        return 0.0
    sessions = [v for k, v in sample.items() if k.startswith("xrx_owned_sessions")]
    return sum(sessions) if sessions else sum(sample.values())


def owned_partitions(sample: dict[str, float] | None) -> float | None:
    if not sample:
        return None
    parts = [v for k, v in sample.items() if k.startswith("xrx_owned_partitions")]
    return sum(parts) if parts else None


async def run_scale_out(n: int, seconds: float, add_at: float, kill_at: float, warmup_s: float,
                        lease_ms: int | None, vad_nice: int | None) -> dict[str, Any]:
    cycle = Cycle.make()
    timeline: list[dict[str, Any]] = []
    events: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xrx-pipeline-") as d:
        tmp = Path(d)
        pcm_path = tmp / "cycle.pcm"
        pcm_path.write_bytes(cycle.pcm)
        with pipeline(lease_ms=lease_ms, vad_nice=vad_nice) as system:
            n_drivers = max(1, math.ceil(n / SESSIONS_PER_DRIVER))
            drivers = start_drivers(system.gateway_port, cycle, pcm_path, n, seconds,
                                    n_drivers, tmp)
            try:
                await drivers_ready(drivers, timeout=60 + n / 5)
                t0 = time.monotonic() + 0.5
                go(drivers, t0)
                async with httpx.AsyncClient() as client:
                    adder: asyncio.Task[None] | None = None
                    while time.monotonic() < t0 + seconds:
                        now = time.monotonic() - t0
                        if now >= add_at and adder is None:
                            events["added"] = now
                            adder = asyncio.create_task(asyncio.to_thread(
                                _add_replicas, system))
                        if adder is not None and adder.done() and "ready" not in events:
                            adder.result()
                            events["ready"] = now
                        # The SIGTERM waits for the new replicas (their start-up, torch and
                        # all, is slow on a busy box) to have had KILL_AFTER_READY_S.
                        due = max(kill_at, events.get("ready", math.inf) + KILL_AFTER_READY_S)
                        if now >= min(due, seconds - KILL_BEFORE_END_S) \
                                and "sigterm" not in events:
                            events["sigterm"] = now
                            p = system.procs["vad-worker-1"].proc
                            assert p is not None
                            p.send_signal(signal.SIGTERM)
                        # list(): the replicas being added insert into the dict meanwhile.
                        names = [k for k in list(system.health)
                                 if k.rsplit("-", 1)[0] in STAGES]
                        samples = await asyncio.gather(
                            *(scrape_owned(client, system.health[k]) for k in names))
                        timeline.append({"t": round(now, 2),
                                         **{k: s for k, s in zip(names, samples, strict=True)}})
                        await asyncio.sleep(SAMPLE_S)
                    if adder is not None:
                        await adder
                outs = await drivers_done(drivers, timeout=cycle.seconds + LOSS_S + 60)
            finally:
                stop_drivers(drivers)
    return scale_out_summary(n, outs, timeline, events, warmup_s, add_at, kill_at)


def _add_replicas(system: Pipeline) -> None:
    for name, command in (("vad-worker-2", "vad-worker"), ("stt-bridge-2", "stt-bridge")):
        system.start(name, command)
    for name in ("vad-worker-2", "stt-bridge-2"):
        system.ready(name)


def scale_out_summary(n: int, outs: list[dict[str, Any]], timeline: list[dict[str, Any]],
                      events: dict[str, float], warmup_s: float, add_at: float,
                      kill_at: float) -> dict[str, Any]:
    def first_time(pred: Any, after: float) -> float | None:
        for row in timeline:
            if row["t"] >= after and pred(row):
                return round(row["t"] - after, 2)
        return None

    added, killed = events.get("added", add_at), events.get("sigterm", kill_at)
    ready = events.get("ready", added)
    phases = {"before_add": turn_stats(outs, warmup_s, t_to=added),
              "replicas_starting": turn_stats(outs, warmup_s, added, ready),
              "both_ready": turn_stats(outs, warmup_s, ready, killed),
              "after_sigterm": turn_stats(outs, warmup_s, killed)}
    gauges = sorted({k for row in timeline for v in row.values() if isinstance(v, dict)
                     for k in v})
    out: dict[str, Any] = {
        "n": n, "events_s": {k: round(v, 2) for k, v in events.items()},
        "gauges_seen": gauges,
        "phases": {k: {x: v[x] for x in ("turns", "lost", "duplicated", "p50_ms", "p99_ms")}
                   for k, v in phases.items()},
        "total": {x: v for x, v in turn_stats(outs, warmup_s).items() if x != "latencies_ms"},
        "owned_timeline": [{"t": row["t"], **{k: owned_total(v) if v is not None else None
                                              for k, v in row.items() if k != "t"}}
                           for row in timeline],
        "partitions_timeline": [{"t": row["t"], **{k: owned_partitions(v)
                                                   for k, v in row.items() if k != "t"}}
                                for row in timeline],
    }
    for stage in ("vad-worker", "stt-bridge"):
        new = f"{stage}-2"
        # From the new replicas being ready, and only until the SIGTERM: what they took of
        # the running sessions on their own.
        out[f"{stage}_new_replica_first_session_after_ready_s"] = first_time(
            lambda row, new=new: row["t"] < killed and owned_total(row.get(new)) >= 1, ready)
        out[f"{stage}_new_replica_quarter_share_after_ready_s"] = first_time(
            lambda row, new=new: row["t"] < killed and owned_total(row.get(new)) >= n / 4,
            ready)
        out[f"{stage}_new_replica_owned_before_sigterm"] = max(
            (owned_total(row.get(new)) for row in timeline if row["t"] < killed), default=0.0)
    out["vad_after_sigterm_new_replica_owns_all_s"] = first_time(
        lambda row: owned_total(row.get("vad-worker-2")) >= n, killed)
    return out


# --- report --------------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]]) -> list[str]:
    base = next((r["p50_ms"] for r in rows if r["n"] == 1), math.nan)
    lines = ["| N | turns lost | p50 ms | p90 ms | p99 ms | p99 - p50(N=1) ms | project+Redis "
             "CPU % | % core/session | vad sessions/core | Redis ops/s | Redis MB | driver CPU % | "
             "others on the box CPU % |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['lost']} of {r['turns']} | {fmt(r['p50_ms'])} | "
            f"{fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['p99_ms'] - base)} | "
            f"{fmt(r['project_plus_redis_cpu_pct'])} | {fmt(r['cpu_pct_per_session'])} | "
            f"{fmt(r['vad_sessions_per_core'])} | {fmt(r['redis_ops_per_s'])} | "
            f"{fmt(r['redis_used_memory_mb'])} | {fmt(r['driver_cpu_pct'])} | "
            f"{fmt(r['other_processes_cpu_pct'])} |")
    steps = [step.value for step in Step if any(step.value in r.get("steps", {}) for r in rows)]
    if steps:
        lines += ["", "Server side, p50 / p99 ms from the end of the voice (as the VAD dates it) "
                  "to each step (shared/latency.py):", "",
                  "| N | " + " | ".join(steps) + " |", "|---:|" + "---:|" * len(steps)]
        for r in rows:
            cells = [f"{fmt(r['steps'][st]['p50_ms'])} / {fmt(r['steps'][st]['p99_ms'])}"
                     if st in r.get("steps", {}) else "-" for st in steps]
            lines.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Per process at each N: CPU % of one core over the steady window / peak RSS MB",
              "", "| N | " + " | ".join(_proc_names(rows)) + " |",
              "|---:|" + "---:|" * len(_proc_names(rows))]
    for r in rows:
        cells = [f"{fmt(r['cpu_pct'].get(p, math.nan))} / {fmt(r['rss_mb'].get(p, math.nan))}"
                 for p in _proc_names(rows)]
        lines.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    return lines


def _proc_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [k for k in r["cpu_pct"] if k not in names]
    return names


def scale_table(s: dict[str, Any]) -> list[str]:
    lines = [f"Scale-out, N={s['n']}: events at {s['events_s']} s; gauges seen: "
             f"{', '.join(s['gauges_seen']) or 'none'}", "",
             "| phase | turns | lost | duplicated | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for k, v in s["phases"].items():
        lines.append(f"| {k} | {v['turns']} | {v['lost']} | {v['duplicated']} | "
                     f"{fmt(v['p50_ms'])} | {fmt(v['p99_ms'])} |")
    names: list[str] = []
    for row in s["owned_timeline"]:
        names += [k for k in row if k != "t" and k not in names]
    lines += ["", "Sessions owned per replica over time (`xrx_owned_sessions`; partitions held "
              "in brackets where `xrx_owned_partitions` exists; - = not answering):", "",
              "| t s | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    step = max(1, len(s["owned_timeline"]) // 30)
    for row, parts in list(zip(s["owned_timeline"], s["partitions_timeline"],
                               strict=True))[::step]:
        lines.append(f"| {row['t']:.0f} | " + " | ".join(
            "-" if row.get(k) is None else f"{row[k]:.0f}"
            + ("" if parts.get(k) is None else f" ({parts[k]:.0f} p)") for k in names) + " |")
    lines += ["", *(f"- {k}: {s[k]}" for k in s
                    if k.endswith(("_s", "_before_sigterm")) and k != "events_s")]
    return lines


def result_from(rows: list[dict[str, Any]], scale: dict[str, Any] | None, seconds: float,
                warmup_s: float, lease_ms: int | None, vad_nice: int | None) -> BenchResult:
    result = BenchResult(NAME if scale is None else NAME_SCALE_OUT)
    for r in rows:
        n = r["n"]
        result.figure(f"first_audio_ms_n{n}", f"end of speech -> first audio, N={n} (p99 "
                      f"{fmt(r['p99_ms'])})", "ms").samples = [round(x, 2)
                                                            for x in r["latencies_ms"]]
        result.figure(f"turns_lost_n{n}", f"turns lost, N={n} (of {r['turns']})",
                      "turns").samples = [r["lost"]]
        result.figure(f"cpu_per_session_n{n}", f"project+Redis CPU per session, N={n}",
                      "% of a core").samples = [round(r["cpu_pct_per_session"], 3)]
        if n > 1:
            result.figure(f"vad_sessions_per_core_n{n}",
                          f"vad-worker real-time sessions per core, N={n}",
                          "sessions").samples = [round(r["vad_sessions_per_core"], 1)]
    lines = table(rows) if rows else []
    if scale is not None:
        lines += ["", *scale_table(scale)]
    result.details.update({
        "git_commit": report.git_commit(), "date": dt.datetime.now().astimezone().isoformat(
            timespec="seconds"), "seconds_per_level": seconds, "warmup_s": warmup_s,
        "sentence": SENTENCE, "silence_ms": SILENCE_MS, "lease_ms": lease_ms or "default",
        "vad_nice": vad_nice,
        "runs": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in rows],
        "table": lines})
    if scale is not None:
        result.details["scale_out"] = scale
    result.notes += [
        f"Measured at commit {result.details['git_commit']}. One replica each of gateway, "
        "vad-worker (real Silero), stt-bridge, agent-bridge, tts-bridge, plus redis-server, "
        "on this machine; STT/agent/TTS are instant fakes (bench/pipeline_fakes.py, one "
        "process, CPU reported as `fakes`, not counted as project CPU).",
        f"Each session streams `{SENTENCE}` (piper, edges trimmed) then {SILENCE_MS} ms of "
        "silence, repeated, in 30 ms frames on an absolute clock, starts spread over one cycle. "
        "Latency: last voiced frame written -> first binary frame back; a turn is lost without "
        f"audio within {LOSS_S:.0f} s or before the next utterance ends; turns ending in a "
        f"session's first {warmup_s} s are not counted.",
        "CPU: psutil over the steady window (all sessions streaming), % of one core; project = "
        "gateway + stage workers; per session = (project + redis-server) / N. The drivers "
        f"(bench/pipeline_driver.py, <= {SESSIONS_PER_DRIVER} sessions each, same box) are "
        "reported apart. The machine is shared: figures are noisy; `others on the box` is the "
        "machine's busy CPU (all cores, % of one) minus this benchmark's processes.",
        niceness_note(rows, vad_nice),
    ]
    return result


def niceness_note(rows: list[dict[str, Any]], vad_nice: int | None) -> str:
    """What the processes ran at: CPU_NICE below 0 needs root or CAP_SYS_NICE."""
    if vad_nice is None:
        return "Every process ran at the niceness it was started with."
    seen = sorted({v for r in rows for k, v in r.get("niceness", {}).items()
                   if k.startswith("vad-worker")})
    ran = f", ran at {', '.join(map(str, seen))}" if seen else ""
    return (f"The vad-worker asked for niceness {vad_nice} (CPU_NICE{ran}), as its larger CPU "
            "share in the deployment (deploy/k8s requests, Compose cpu_shares); the other "
            "processes ran as started.")


# --- entry points ----------------------------------------------------------------------------

def run(quick: bool) -> BenchResult:
    """``python -m bench``'s (``make bench``'s) short form, quick or not: N=1 and N=20 for
    15 s, which shows the harness works and the per-session figures; the load levels that
    matter take minutes and run standalone (``python -m bench.pipeline_load``)."""
    levels, seconds = [1, 20], 15.0
    rows = asyncio.run(run_levels(levels, seconds, WARMUP_S, None, VAD_NICE))
    return result_from(rows, None, seconds, WARMUP_S, None, VAD_NICE)


def _nice(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,50,100,150",
                        help="comma-separated N (the scale-out run takes the first)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="seconds each session streams per level")
    parser.add_argument("--warmup", type=float, default=WARMUP_S)
    parser.add_argument("--lease-ms", type=int, default=None,
                        help="LEASE_MS for the workers (default: the project's)")
    parser.add_argument("--vad-nice", type=_nice, default=VAD_NICE,
                        help="CPU_NICE for the vad-worker (default %(default)s: its larger "
                             "CPU share in the deployment; 'none' runs it as the others)")
    parser.add_argument("--scale-out", action="store_true",
                        help="the replica add/remove scenario instead of the levels")
    parser.add_argument("--add-at", type=float, default=None,
                        help="scale-out: seconds until the second replicas start")
    parser.add_argument("--kill-at", type=float, default=None,
                        help="scale-out: seconds until vad-worker-1 gets SIGTERM")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    scale = None
    rows: list[dict[str, Any]] = []
    if args.scale_out:
        add_at = args.add_at if args.add_at is not None else args.seconds / 3
        kill_at = args.kill_at if args.kill_at is not None else 2 * args.seconds / 3
        scale = asyncio.run(run_scale_out(levels[0], args.seconds, add_at, kill_at,
                                          args.warmup, args.lease_ms, args.vad_nice))
    else:
        rows = asyncio.run(run_levels(levels, args.seconds, args.warmup, args.lease_ms,
                                      args.vad_nice))
    result = result_from(rows, scale, args.seconds, args.warmup, args.lease_ms, args.vad_nice)
    result.seconds = time.perf_counter() - started
    report.finish_standalone(result, args.out, save=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
