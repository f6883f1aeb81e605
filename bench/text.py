"""``text``: text turn latency end to end: client -> gateway -> Redis -> agent bridge -> demo
agent -> reply stream -> gateway -> client, all real processes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.common import BenchResult
from tests.harness import Client

NAME = "text"
QUESTION = "What is on the menu?"
STARTED, ENDED = "agent_started_thinking", "agent_ended_thinking"
CONCURRENT = 20


@dataclass
class TurnTimes:
    started: float
    first_text: float
    ended: float


async def timed_turn(client: Client, text: str = QUESTION, timeout: float = 30.0) -> TurnTimes:
    """Send ``text``; seconds from the send to the thinking signals and the first agent text."""
    t0 = time.perf_counter()
    await client.say(text)
    started = first_text = None
    deadline = t0 + timeout
    while True:
        msg = await client.next(max(0.01, deadline - time.perf_counter()))
        now = time.perf_counter() - t0
        if not isinstance(msg, dict):
            continue
        if msg.get("content") == STARTED and started is None:
            started = now
        elif (msg.get("user") == "agent" and msg.get("type") in ("audio", "text")
              and first_text is None):
            first_text = now
        elif msg.get("content") == ENDED:
            if started is None or first_text is None:
                raise RuntimeError(f"turn ended without a start signal or text: {client.received}")
            return TurnTimes(started, first_text, now)


def _record(result: BenchResult, times: list[TurnTimes], suffix: str, label: str) -> None:
    for t in times:
        result.figure(f"started_ms_{suffix}", f"send -> agent_started_thinking, {label}",
                      "ms").samples.append(1000 * t.started)
        result.figure(f"first_text_ms_{suffix}", f"send -> first agent text, {label}",
                      "ms").samples.append(1000 * t.first_text)
        result.figure(f"ended_ms_{suffix}", f"send -> agent_ended_thinking, {label}",
                      "ms").samples.append(1000 * t.ended)


def run(quick: bool) -> BenchResult:
    from bench.systems import text_system

    result = BenchResult(NAME)
    n, rounds = (3, 1) if quick else (30, 3)
    with text_system() as system:
        asyncio.run(_measure(system.gateway_port, result, n, rounds, warm_up=not quick))
    result.details.update({"question": QUESTION, "sequential_turns": n,
                           "concurrent_sessions": CONCURRENT, "concurrent_rounds": rounds,
                           "processes": ["redis-server", "demo-agent", "agent-bridge",
                                         "gateway"]})
    result.notes.append("Sequential: one fresh session per turn (connected before the clock "
                        "starts), one turn at a time. Concurrent: 20 sessions connected, then "
                        "one turn each sent together; turns/s = 20 / (last "
                        "agent_ended_thinking - first send), one sample per round.")
    return result


async def _measure(port: int, result: BenchResult, n: int, rounds: int, warm_up: bool) -> None:
    if warm_up:
        client = await Client.connect(port)
        try:
            await timed_turn(client)
        finally:
            await client.close()
    sequential: list[TurnTimes] = []
    for _ in range(n):
        client = await Client.connect(port)
        try:
            sequential.append(await timed_turn(client))
        finally:
            await client.close()
    _record(result, sequential, "seq", "sequential")

    concurrent: list[TurnTimes] = []
    for _ in range(rounds):
        clients = await asyncio.gather(*(Client.connect(port) for _ in range(CONCURRENT)))
        try:
            t0 = time.perf_counter()
            times = await asyncio.gather(*(timed_turn(c, timeout=60) for c in clients))
            wall = time.perf_counter() - t0  # first send to the last agent_ended_thinking
            concurrent.extend(times)
            result.figure("turns_per_s_c20", "turns/s, 20 concurrent sessions",
                          "turns/s").samples.append(CONCURRENT / wall)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    _record(result, concurrent, "c20", f"{CONCURRENT} concurrent")
