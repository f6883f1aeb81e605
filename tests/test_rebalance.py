"""Scale-out under live sessions: a replica added takes its share of the running sessions, a
replica stopped hands its sessions over, and no turn is lost or said twice meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from shared import topology
from shared.keys import Stage
from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, is_signal, lease_counts, summary, texts, wait_ready

ENDED = "agent_ended_thinking"


@pytest.fixture
def system(redis_server: RedisServer) -> Iterator[TextSystem]:
    env = make_env(redis_server, 7, GUARDRAILS_AGENT_HOST="", LEASE_MS="2000")
    system = TextSystem(redis_server, 7, env)
    try:
        system.start("demo-agent", "demo-agent", int(env["AGENT_PORT"]))
        system.start("bridge-a", "agent-bridge")
        system.start("gateway", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        yield system
    finally:
        system.stop_all()


async def turn(client: Client, text: str) -> list:
    await client.say(text)
    return await client.until(is_signal(ENDED), timeout=30)


async def wait_counts(r: aioredis.Redis, expected: dict[str, int], seconds: float) -> None:
    counts: dict[str, int] = {}
    for _ in range(int(seconds * 10)):
        counts = await lease_counts(r, Stage.AGENT_BRIDGE)
        if counts == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"partitions held {counts}, expected {expected}")


async def test_a_replica_added_and_one_stopped_move_running_sessions(
        system: TextSystem) -> None:
    r = aioredis.from_url(system.redis_url)
    n = topology.partitions()
    clients = [await Client.connect(system.gateway_port) for _ in range(6)]
    for c in clients:
        assert texts(await turn(c, "hello"))
    await wait_counts(r, {"bridge-a": n}, 5)

    # A turn in flight while its partition may move: it finishes where it runs.
    await clients[0].say("count for me [stream=5]")
    await clients[0].until(lambda m: isinstance(m, dict) and "Part 1" in m.get("content", ""))
    system.start("bridge-b", "agent-bridge")
    await wait_counts(r, {"bridge-a": n // 2, "bridge-b": n // 2}, 10)
    got = await clients[0].until(is_signal(ENDED), timeout=30)
    got += await clients[0].drain(1.0)
    parts = [t for t in texts(got) if t.startswith("Part ")]
    assert parts == [f"Part {i} of 5." for i in range(2, 6)], summary(got)

    # Every session, moved or not, answers each turn exactly once.
    results = await asyncio.gather(*(turn(c, "what is on the menu?") for c in clients))
    for c, got in zip(clients, results, strict=True):
        got += await c.drain(0.5)
        assert [m["content"] for m in got if isinstance(m, dict)].count(ENDED) == 1
        assert any("pepperoni" in t.lower() for t in texts(got)), summary(got)

    # A replica stopped hands everything over at once, not after a lease.
    await asyncio.to_thread(system.procs["bridge-a"].terminate)
    await wait_counts(r, {"bridge-b": n}, 3)
    results = await asyncio.gather(*(turn(c, "hello") for c in clients))
    for got in results:
        assert texts(got), summary(got)
    for c in clients:
        await c.close()
    await r.aclose()
