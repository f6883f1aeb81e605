"""``faults``: worker and Redis faults at random moments under load, on real processes.

One gateway, two replicas of each worker (vad-worker with the real Silero, stt-bridge,
agent-bridge, tts-bridge), redis-server and instant fake STT/agent/TTS that echo which
utterances a reply answers (``bench/fault_fakes.py``); N sessions talk continuously as in the
pipeline benchmark (a sentence, 1.8 s of silence, again). After a baseline without faults,
each fault is repeated ``--trials`` times, a random 3-8 s after the system is whole again:

- ``kill -9 <stage>``: a random replica of that stage; restarted (a new replica id, as a new
  pod or process gets) after OBSERVE_S, and the next trial waits for it to hold its share;
- ``SIGTERM``: a random replica of a random stage (graceful hand-over), restarted likewise;
- ``SIGSTOP``: a random replica of a random stage, stopped for 2 x LEASE_MS plus up to 1 s
  (its leases run out and others take over), then SIGCONT: it must write nothing stale;
- ``redis down 2 s`` / ``10 s``: redis-server killed and started again on its port, empty
  (no persistence: ``xrx up``'s default today); the gateway registers its sessions again.

Per fault type: turns (utterances) sent, lost, duplicated, merged (see
``bench/fault_analysis.py``), the longest stall and the recovery time (fault -> the first
normally answered turn of the last affected session to get one; affected = sessions whose
partition the faulted replica held, or all for Redis; includes waiting for the user's next
utterance, up to one 3.6 s cycle).

    python -m bench.faults --trials 5 --sessions 20
    python -m bench.faults --analyse /tmp/xrx-test-logs/faults-....json   # re-analyse a dump

``python -m bench`` runs the short form (one trial of each worker fault, 10 sessions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import psutil
import redis

from bench import fault_analysis, report
from bench.common import BenchResult, fmt
from bench.pipeline_load import (
    API_KEY,
    FRAME_BYTES,
    STAGES,
    Cycle,
    Pipeline,
    pipeline,
)
from bench.report import write_standalone
from shared import keys, topology
from shared.config import Settings
from shared.keys import Stage
from tests.harness import LOG_DIR, ROOT

NAME = "faults"
STAGE_OF = {"vad-worker": Stage.VAD, "stt-bridge": Stage.STT_BRIDGE,
            "agent-bridge": Stage.AGENT_BRIDGE, "tts-bridge": Stage.TTS_BRIDGE}
WORKER_FAULTS = [*(f"kill -9 {s}" for s in STAGES), "SIGTERM", "SIGSTOP"]
REDIS_FAULTS = ["redis down 2 s", "redis down 10 s"]
BASELINE_S = 20.0
OBSERVE_S = 10.0  # after a fault, before the replica is restarted
GAP_S = (3.0, 8.0)  # whole again -> next fault: the random moment
SETTLE_MAX_S = 40.0
SAMPLE_S = 1.0


def lease_ms() -> int:
    return Settings().LEASE_MS


class Cpu:
    """CPU seconds per process (dead ones keep their last sample) against the machine's."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}
        self.first: dict[int, float] = {}
        self.machine0 = self._machine()
        self.t0 = time.monotonic()

    @staticmethod
    def _machine() -> float:
        m = psutil.cpu_times()
        return float(m.user + m.nice + m.system + m.irq + m.softirq)

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            self.first.setdefault(pid, float(t.user + t.system))
            self.last[pid] = float(t.user + t.system)

    def summary(self) -> dict[str, float]:
        secs = time.monotonic() - self.t0
        ours = sum(self.last[p] - self.first[p] for p in self.last)
        machine = self._machine() - self.machine0
        return {"seconds": round(secs, 1), "bench_cpu_pct": round(100 * ours / secs, 1),
                "machine_busy_pct": round(100 * machine / secs, 1),
                "others_pct": round(100 * (machine - ours) / secs, 1)}


class Bench:
    def __init__(self, system: Pipeline, rng: random.Random, driver: subprocess.Popen[str],
                 t0: float) -> None:
        self.system, self.rng, self.driver, self.t0 = system, rng, driver, t0
        self.r = redis.Redis.from_url(system.redis.url, socket_timeout=2)
        self.replicas = {stage: [f"{stage}-1", f"{stage}-2"] for stage in STAGES}
        self.generation = 0
        self.trials: list[dict[str, Any]] = []
        self.cpu = Cpu()
        self.logs: dict[str, str] = {n: str(p.log_path) for n, p in system.procs.items()}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def pids(self) -> list[int]:
        pids = [p.proc.pid for p in self.system.procs.values()
                if p.proc is not None and p.proc.poll() is None]
        if self.system.redis.proc is not None:
            pids.append(self.system.redis.proc.pid)
        return [*pids, self.system.fakes.pid, self.driver.pid, os.getpid()]

    def pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.cpu.sample(self.pids())
            time.sleep(min(SAMPLE_S, left))

    def holders(self, stage: str) -> dict[str, str]:
        """Partition -> replica holding its lease (as Redis says now)."""
        try:
            raw = self.r.mget([keys.partition_lease(STAGE_OF[stage], n)
                               for n in range(topology.partitions())])
        except redis.RedisError:
            return {}
        return {str(n): cast(bytes, v).decode().rsplit(" ", 1)[0]
                for n, v in enumerate(raw) if v}

    def settle(self) -> float:
        """Wait until every stage's partitions are all held, by both its replicas, each
        with at least a quarter of them; seconds waited."""
        started = time.monotonic()
        quarter = topology.partitions() // 4
        while time.monotonic() - started < SETTLE_MAX_S:
            ok = True
            for stage in STAGES:
                h = self.holders(stage)
                counts = {n: list(h.values()).count(n) for n in self.replicas[stage]}
                if len(h) < topology.partitions() or min(counts.values()) < quarter:
                    ok = False
                    break
            if ok:
                break
            self.pause(0.5)
        return time.monotonic() - started

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        p = self.system.procs[name].proc
        assert p is not None
        return p

    def restart(self, stage: str, name: str) -> str:
        self.generation += 1
        slot = self.replicas[stage].index(name)
        new = f"{stage}-{slot + 1}.r{self.generation}"
        self.system.start(new, stage)
        self.system.ready(new)
        self.replicas[stage][slot] = new
        self.logs[new] = str(self.system.procs[new].log_path)
        return new

    def inject(self, fault: str) -> dict[str, Any]:
        trial: dict[str, Any] = {"fault": fault}
        if fault.startswith("redis"):
            down = float(fault.split()[2])
            trial.update(target="redis-server", holders=None, down_s=down)
            trial["t"] = self.now()
            self.system.redis.stop()
            self.pause(down)
            self.system.redis.start()
            trial["back_t"] = self.now()
            self.pause(OBSERVE_S)
            trial["restored_t"] = self.now()
            return trial
        stage = fault.rsplit(" ", 1)[-1] if fault.startswith("kill") else self.rng.choice(STAGES)
        name = self.rng.choice(self.replicas[stage])
        trial.update(stage=stage, target=name, holders=self.holders(stage))
        p = self.proc(name)
        trial["t"] = self.now()
        if fault.startswith("kill"):
            p.send_signal(signal.SIGKILL)
            p.wait()
        elif fault == "SIGTERM":
            p.send_signal(signal.SIGTERM)
            try:
                trial["exit_code"] = p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                trial["exit_code"] = "killed after 30 s"
            trial["exited_t"] = self.now()
        elif fault == "SIGSTOP":
            stop_s = 2 * lease_ms() / 1000 + self.rng.uniform(0.0, 1.0)
            p.send_signal(signal.SIGSTOP)
            try:
                self.pause(stop_s)
            finally:
                p.send_signal(signal.SIGCONT)
            trial.update(stopped_s=round(stop_s, 2), cont_t=self.now())
        self.pause(OBSERVE_S)
        if fault != "SIGSTOP":
            trial["replacement"] = self.restart(stage, name)
        trial["restored_t"] = self.now()
        return trial

    def run(self, faults: list[str], trials: int) -> None:
        for fault in faults:
            for i in range(trials):
                self.pause(self.rng.uniform(*GAP_S))
                trial = self.inject(fault)
                trial["settle_s"] = round(self.settle(), 2)
                trial["t"] = round(trial["t"], 3)
                self.trials.append(trial)
                print(f"  {fault} #{i + 1}: {trial.get('target')} at {trial['t']:.1f} s, "
                      f"whole again {trial['settle_s']:.1f} s after the restore", flush=True)


def start_driver(port: int, cycle: Cycle, pcm_path: Path, n: int,
                 tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    ids = list(range(n))
    cfg = {"port": port, "path": f"/api/v1/ws?api_key={API_KEY}", "pcm_path": str(pcm_path),
           "frame_bytes": FRAME_BYTES, "last_voiced_frame": cycle.last_voiced_frame,
           "seconds": 1e6, "session_ids": ids,
           "start_offsets_s": [cycle.seconds * i / n for i in ids], "reply_text": ""}
    cfg_path, out = tmp / "fault-driver.json", tmp / "fault-driver-out.json"
    cfg_path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "bench.fault_driver", str(cfg_path),
                             str(out)], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    return proc, out


def measure(faults: list[str], trials: int, n: int, seed: int) -> dict[str, Any]:
    """Run everything; the raw dump (driver output, schedule, log paths) for the analysis."""
    rng = random.Random(seed)
    cycle = Cycle.make()
    with tempfile.TemporaryDirectory(prefix="xrx-faults-") as d:
        tmp = Path(d)
        pcm_path = tmp / "cycle.pcm"
        pcm_path.write_bytes(cycle.pcm)
        with pipeline(replicas={s: 2 for s in STAGES}, fakes_module="bench.fault_fakes") \
                as system:
            driver, out = start_driver(system.gateway_port, cycle, pcm_path, n, tmp)
            bench: Bench | None = None
            try:
                assert driver.stdin is not None and driver.stdout is not None
                line = driver.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"driver did not connect: {line!r}")
                t0 = time.monotonic() + 0.5
                driver.stdin.write(f"{t0}\n")
                driver.stdin.flush()
                bench = Bench(system, rng, driver, t0)
                print(f"  baseline {BASELINE_S:.0f} s ...", flush=True)
                bench.pause(BASELINE_S)
                bench.run(faults, trials)
                bench.pause(5.0)
                end_t = bench.now()
                driver.stdin.write("stop\n")
                driver.stdin.flush()
                driver.wait(120)
                raw = json.loads(out.read_text())
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
                if bench is not None:
                    for name in system.procs:  # nothing left stopped
                        p = system.procs[name].proc
                        if p is not None and p.poll() is None:
                            p.send_signal(signal.SIGCONT)
            assert bench is not None
            return {"seed": seed, "sessions": n, "trials_per_fault": trials, "faults": faults,
                    "lease_ms": lease_ms(), "cycle_s": cycle.seconds, "baseline_s": BASELINE_S,
                    "observe_s": OBSERVE_S, "end_t": end_t, "schedule": bench.trials,
                    "driver": raw, "cpu": bench.cpu.summary(), "logs": bench.logs,
                    "git_commit": report.git_commit(),
                    "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def analyse(dump: dict[str, Any]) -> dict[str, Any]:
    views = fault_analysis.verdicts(dump["driver"], dump["end_t"])
    schedule = dump["schedule"]
    first_fault = schedule[0]["t"] if schedule else dump["end_t"]
    warmup = dump["cycle_s"] + 2.0
    p99, normal_s = fault_analysis.baseline_normal_s(views, warmup, first_fault)
    fault_analysis.mark_normal(views, normal_s)
    baseline = fault_analysis.window_stats(views, warmup, first_fault)
    trials = []
    for i, trial in enumerate(schedule):
        until = schedule[i + 1]["t"] if i + 1 < len(schedule) else dump["end_t"]
        stats = fault_analysis.trial_stats(views, trial, until)
        stats.update({k: trial[k] for k in ("stopped_s", "exit_code", "settle_s", "down_s")
                      if k in trial})
        trials.append(stats)
    per_fault: dict[str, dict[str, Any]] = {}
    for fault in dump["faults"]:
        rows = [t for t in trials if t["fault"] == fault]
        recov = [t["recovery_s"] for t in rows if t["recovery_s"] is not None]
        per_fault[fault] = {
            "trials": len(rows), "turns": sum(t["turns"] for t in rows),
            **{k: sum(t[k] for t in rows) for k in (
                "lost", "duplicated", "merged", "clears", "errors", "closes", "crosstalk",
                "unmarked_replies", "unrecovered_sessions", "affected_sessions")},
            "max_stall_s": max((t["max_stall_s"] for t in rows), default=math.nan),
            "recovery_median_s": float(sorted(recov)[len(recov) // 2]) if recov else None,
            "recovery_max_s": max(recov) if recov else None}
    return {"baseline": {**{k: v for k, v in baseline.items() if k != "bad_turns"},
                         "p99_latency_s": round(p99, 3), "normal_s": round(normal_s, 3),
                         "bad_turns": baseline["bad_turns"][:10]},
            "per_fault": per_fault, "trials": trials}


def _s(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt(x)


def table(dump: dict[str, Any], res: dict[str, Any]) -> list[str]:
    b = res["baseline"]
    lines = [f"Seed {dump['seed']}, {dump['sessions']} sessions, LEASE_MS {dump['lease_ms']}, "
             f"commit {dump['git_commit']}, {dump['date']}. Baseline (no fault, "
             f"{b['turns']} turns): {b['lost']} lost, {b['duplicated']} duplicated, "
             f"{b['merged']} merged, max stall {_s(b['max_stall_s'])} s, p99 "
             f"{_s(b['p99_latency_s'])} s (a turn is normal within {_s(b['normal_s'])} s).", "",
             "| fault | trials | turns | lost | duplicated | merged | max stall s | recovery s "
             "(median / max) | affected sessions | unrecovered | clear_audio_buffer | errors "
             "| closed |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for fault, r in res["per_fault"].items():
        lines.append(
            f"| {fault} | {r['trials']} | {r['turns']} | {r['lost']} | {r['duplicated']} | "
            f"{r['merged']} | {_s(r['max_stall_s'])} | {_s(r['recovery_median_s'])} / "
            f"{_s(r['recovery_max_s'])} | {r['affected_sessions']} | "
            f"{r['unrecovered_sessions']} | {r['clears']} | {r['errors']} | {r['closes']} |")
    lines += ["", "Per trial (t = seconds into the run; bad after restore = lost, duplicated or "
              "merged turns ending after the replica was replaced / Redis back + "
              f"{dump['observe_s']:.0f} s):", "",
              "| fault | target | t s | turns | lost | dup | merged | bad after restore | "
              "max stall s | affected | recovery s | whole again s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in res["trials"]:
        lines.append(
            f"| {t['fault']} | {t['target']} | {t['t']:.1f} | {t['turns']} | {t['lost']} | "
            f"{t['duplicated']} | {t['merged']} | {t['bad_after_restore']} | "
            f"{_s(t['max_stall_s'])} | {t['affected_sessions']} | {_s(t['recovery_s'])} | "
            f"{_s(t.get('settle_s'))} |")
    return lines


def result_from(dump: dict[str, Any], res: dict[str, Any], dump_path: Path | None
                ) -> BenchResult:
    result = BenchResult(NAME)
    for fault, r in res["per_fault"].items():
        key = fault.replace(" ", "_").replace("-", "")
        result.figure(f"lost_{key}", f"turns lost, {fault} (of {r['turns']})",
                      "turns").samples = [r["lost"]]
        result.figure(f"dup_{key}", f"turns duplicated, {fault}", "turns").samples = \
            [r["duplicated"]]
        result.figure(f"merged_{key}", f"turns merged, {fault}", "turns").samples = \
            [r["merged"]]
        stalls = [t["max_stall_s"] for t in res["trials"] if t["fault"] == fault]
        result.figure(f"stall_{key}", f"max stall per trial, {fault}", "s").samples = stalls
    cpu = dump["cpu"]
    result.details.update({
        "git_commit": dump["git_commit"], "date": dump["date"], "seed": dump["seed"],
        "sessions": dump["sessions"], "trials_per_fault": dump["trials_per_fault"],
        "lease_ms": dump["lease_ms"], "cpu": cpu, "dump": str(dump_path) if dump_path else None,
        "baseline": res["baseline"], "per_fault": res["per_fault"],
        "runs": res["trials"], "table": table(dump, res)})
    result.notes += [
        f"Measured at commit {dump['git_commit']}, seed {dump['seed']} (rerun with --seed). One "
        "gateway, two replicas of each worker, redis-server without persistence, instant fake "
        "STT/agent/TTS that echo which utterances a reply answers (bench/fault_fakes.py: "
        "utterances are marked in the low bit of their samples).",
        "lost: no audio naming the utterance within 15 s; duplicated: named by two replies, a "
        "chunk of its reply received twice, or two agent texts; merged: its reply names "
        "another utterance too; stall: end of speech -> first audio; recovery: fault -> the "
        "first normally answered turn of the last affected session (includes waiting up to one "
        f"{dump['cycle_s']:.1f} s cycle for the user's next utterance).",
        f"The machine is shared (2 cores): over the run this benchmark's processes used "
        f"{cpu['bench_cpu_pct']} % of a core, others on the box {cpu['others_pct']} % "
        f"(machine busy {cpu['machine_busy_pct']} %). Logs of every process: "
        f"{LOG_DIR} (names in the dump).",
    ]
    return result


def save_dump(dump: dict[str, Any]) -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"faults-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    path.write_text(json.dumps(dump))
    return path


def print_summary(result: BenchResult) -> None:
    print("\n".join(result.details["table"]))
    for note in result.notes:
        print(f"  - {note}")


def run(quick: bool) -> BenchResult:
    """``python -m bench``'s short form: one trial of each worker fault, 10 sessions."""
    seed = random.SystemRandom().randrange(2**31)
    print(f"  seed {seed}", flush=True)
    dump = measure(WORKER_FAULTS, 1, 10, seed)
    path = save_dump(dump)
    return result_from(dump, analyse(dump), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", default="all",
                        help="'all', 'workers', 'redis' or a comma-separated list of: "
                             + ", ".join(WORKER_FAULTS + REDIS_FAULTS))
    parser.add_argument("--analyse", type=Path, default=None,
                        help="re-analyse a saved dump instead of running")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if args.analyse is not None:
        dump, path = json.loads(args.analyse.read_text()), args.analyse
    else:
        faults = {"all": WORKER_FAULTS + REDIS_FAULTS, "workers": WORKER_FAULTS,
                  "redis": REDIS_FAULTS}.get(args.faults)
        if faults is None:
            faults = [f.strip() for f in args.faults.split(",") if f.strip()]
            unknown = [f for f in faults if f not in WORKER_FAULTS + REDIS_FAULTS]
            if unknown:
                parser.error(f"unknown faults: {unknown}")
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        print(f"seed {seed}", flush=True)
        dump = measure(faults, args.trials, args.sessions, seed)
        path = save_dump(dump)
        print(f"dump: {path}")
    result = result_from(dump, analyse(dump), path)
    result.seconds = time.perf_counter() - started
    print_summary(result)
    if not args.no_write:
        md, js = write_standalone(result, args.out)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
