"""``redis``: the gateway's raw audio ingest: 50 clients send 30 ms frames as fast as one
gateway takes them (WebSocket -> validation -> XADD), nothing consuming downstream.

Frames are counted by the gateway's own counter (``xrx_gateway_frames_in_total`` for audio,
counted as its writer takes them for Redis), not by XADD calls: one XADD carries every
session of a partition and 40-80 ms of each (shared/pacing.py)."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bench.common import BenchResult
from tests.harness import Client

NAME = "redis"
CLIENTS = 50
FRAME = bytes(960)  # 30 ms of 16 kHz s16le silence: the gateway does not look inside
FRAMES_PER_S_PER_STREAM = 1000 / 30
MAX_FRAMES_PER_CLIENT = 200_000  # the send loop's bound besides the clock
# Frames sent but not yet taken for Redis, over all clients. Without a bound the loopback
# socket buffers (megabytes each) soak up frames far faster than the gateway reads them, and
# "frames sent" would measure the kernel, not the gateway. Half the gateway's own queue
# (gateway/audio_ingest.py MAX_WAITING), and several polls' worth of frames.
MAX_IN_FLIGHT = 200 * CLIENTS
POLL_S = 0.05
AUDIO_COUNTER = "xrx_gateway_frames_in"  # the family name (the exposition adds _total)
SAMPLE_S = 1.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counters:
    """Frames sent by the clients, and what Redis has seen, polled every ``POLL_S``."""

    def __init__(self, r: aioredis.Redis, http: httpx.AsyncClient) -> None:
        self.r, self.http = r, http
        self.sent = 0
        self.taken = 0  # audio frames the gateway has taken for Redis, as of the last poll
        self.base_taken = 0  # ... when the clients started
        self.own_commands = 0  # INFO calls made here, left out of the ops figure
        self.room = asyncio.Event()  # set while fewer than MAX_IN_FLIGHT frames are in flight
        self.room.set()

    @property
    def in_flight(self) -> int:
        return self.sent - (self.taken - self.base_taken)

    async def frames_taken(self) -> int:
        text = (await self.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            if family.name == AUDIO_COUNTER:
                self.taken = int(sum(s.value for s in family.samples
                                     if s.labels.get("kind") == "audio"
                                     and s.name.endswith("_total")))
        return self.taken

    async def total_commands(self) -> int:
        stats = await self.r.info("stats")
        self.own_commands += 1
        return int(stats["total_commands_processed"])

    async def poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.frames_taken()
            if self.in_flight < MAX_IN_FLIGHT:
                self.room.set()
            await asyncio.sleep(POLL_S)


async def _sender(client: Client, counters: Counters, start: asyncio.Event,
                  deadline: list[float]) -> None:
    await start.wait()
    for _ in range(MAX_FRAMES_PER_CLIENT):
        while counters.in_flight >= MAX_IN_FLIGHT:
            counters.room.clear()
            await counters.room.wait()
        if time.perf_counter() >= deadline[0]:
            return
        await client.ws.send(FRAME)
        counters.sent += 1
        # send() returns without yielding while the socket buffer has room: yield, so that
        # every client gets its turn and the poller keeps time.
        await asyncio.sleep(0)


async def _measure(port: int, redis_url: str, pids: dict[str, int], duration: float,
                   result: BenchResult) -> None:
    r = aioredis.from_url(redis_url)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    clients = await asyncio.gather(*(Client.connect(port) for _ in range(CLIENTS)))
    stop = asyncio.Event()
    poller: asyncio.Task[None] | None = None
    try:
        counters = Counters(r, http)
        start, deadline = asyncio.Event(), [0.0]
        taken0 = counters.base_taken = await counters.frames_taken()
        tasks = [asyncio.create_task(_sender(c, counters, start, deadline))
                 for c in clients]
        poller = asyncio.create_task(counters.poll(stop))
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        cmds0, own0 = await counters.total_commands(), counters.own_commands
        t0 = time.perf_counter()
        deadline[0] = t0 + duration
        start.set()
        prev = (t0, 0, taken0, cmds0, own0)
        while time.perf_counter() + SAMPLE_S <= deadline[0] + 0.05:
            await asyncio.sleep(max(0.0, prev[0] + SAMPLE_S - time.perf_counter()))
            now, sent = time.perf_counter(), counters.sent
            taken = await counters.frames_taken()
            cmds = await counters.total_commands()
            own = counters.own_commands
            dt = now - prev[0]
            result.figure("frames_per_s", f"30 ms frames taken/s by the gateway, {CLIENTS} "
                          "clients", "frames/s").samples.append((taken - prev[2]) / dt)
            result.figure("sent_per_s", f"30 ms frames sent/s by the {CLIENTS} clients",
                          "frames/s").samples.append((sent - prev[1]) / dt)
            result.figure("redis_ops_per_s", "Redis ops/s (INFO total_commands_processed)",
                          "ops/s").samples.append((cmds - prev[3] - (own - prev[4])) / dt)
            prev = (now, sent, taken, cmds, own)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        cpu1 = {name: _cpu_s(pid) for name, pid in pids.items()}
        await counters.frames_taken()
        in_flight = counters.in_flight
        # What the gateway still had buffered when the clients stopped, taken afterwards.
        for _ in range(100):
            await counters.frames_taken()
            if counters.in_flight <= 0:
                break
            await asyncio.sleep(0.05)
        written = counters.taken - taken0
        result.details.update({
            "clients": CLIENTS, "frame_bytes": len(FRAME), "duration_s": round(elapsed, 3),
            "max_frames_in_flight": MAX_IN_FLIGHT,
            "frames_sent": counters.sent, "frames_per_s_overall": round(counters.sent / elapsed),
            "frames_in_flight_at_stop": in_flight, "frames_taken_by_gateway": written,
            "equivalent_real_time_streams": round(counters.sent / elapsed
                                                  / FRAMES_PER_S_PER_STREAM),
            "cpu_percent_of_one_core": {name: round(100 * (cpu1[name] - cpu0[name]) / elapsed)
                                        for name in pids},
        })
    finally:
        stop.set()
        if poller is not None:
            await asyncio.gather(poller, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await r.aclose()
        await http.aclose()


def run(quick: bool) -> BenchResult:
    from bench.systems import gateway_only

    result = BenchResult(NAME)
    duration = 2.0 if quick else 10.0
    with gateway_only() as system:
        gateway = system.procs["gateway"].proc
        assert gateway is not None and system.redis.proc is not None
        pids: dict[str, int] = {"gateway": gateway.pid, "redis-server": system.redis.proc.pid,
                                "bench client": os.getpid()}
        asyncio.run(_measure(system.gateway_port, system.redis_url, pids, duration, result))
    result.notes.append(f"{CLIENTS} WebSocket clients in the bench process send 960-byte "
                        f"frames back to back for {duration:.0f} s, never more than "
                        f"{MAX_IN_FLIGHT} frames ahead of what the gateway has taken for Redis "
                        f"(its audio frame counter, polled every {POLL_S * 1000:.0f} ms); "
                        "per-second samples. Only redis-server and the gateway run: nothing "
                        "reads the audio streams (the gateway trims them by age, as always). "
                        "Redis ops/s leaves out the bench's own INFO polls. On 2 cores the "
                        "clients, gateway and redis-server share the CPU: see "
                        "cpu_percent_of_one_core below.")
    return result
