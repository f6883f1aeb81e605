"""Redis with Sentinel: a primary, a replica and three sentinels, all real processes; the
primary is killed under live sessions and every service follows the promoted replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shared import keys
from shared.config import Settings
from shared.redis_io import connect
from shared.turns import begin_turn
from tests.conftest import TextSystem, make_env
from tests.harness import Client, SentinelRedis, is_signal, summary, texts

ENDED = "agent_ended_thinking"
UNAVAILABLE = "temporarily unavailable"


@pytest.fixture(scope="module")
def sentinel_redis() -> Iterator[SentinelRedis]:
    cluster = SentinelRedis(down_after_ms=1000)
    try:
        cluster.start()
        cluster.wait_synced()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def system(sentinel_redis: SentinelRedis) -> Iterator[TextSystem]:
    # Leases outlast the failover (~2.3 s here): otherwise every partition changes hands
    # each time the primary does (deploy/README.md, "Redis").
    env = make_env(sentinel_redis.primary, 0, GUARDRAILS_AGENT_HOST="", LEASE_MS="5000",
                   **sentinel_redis.env)
    system = TextSystem(sentinel_redis.primary, 0, env)
    try:
        system.start_text_pipeline(guardrails=False)
        yield system
    finally:
        system.stop_all()


def settings_for(cluster: SentinelRedis) -> Settings:
    return Settings(REDIS_SENTINELS=cluster.env["REDIS_SENTINELS"],
                    REDIS_SENTINEL_MASTER=cluster.MASTER, REDIS_PASSWORD=cluster.password)


@dataclass
class Tally:
    """Each turn a client sent, by what became of it."""

    answered: list[float] = field(default_factory=list)  # send times
    refused: list[float] = field(default_factory=list)  # told "temporarily unavailable"
    lost: list[tuple[float, list]] = field(default_factory=list)  # silence for 15 s
    empty: list[tuple[float, list]] = field(default_factory=list)  # thinking, but no answer


async def talk(port: int, n: int, stop: asyncio.Event, tally: Tally) -> None:
    """One client saying one thing after another, each waiting for its answer."""
    client = await Client.connect(port)
    i = 0
    while not stop.is_set():
        i += 1
        sent = time.monotonic()
        await client.say(f"hello from {n}, turn {i}")
        try:
            got = await client.until(
                lambda m: is_signal(ENDED)(m) or (isinstance(m, dict) and m["type"] == "error"),
                timeout=15)
        except TimeoutError:
            tally.lost.append((sent, summary(client.received[-6:])))
            continue
        if got[-1]["type"] == "error":
            assert UNAVAILABLE in got[-1]["content"], summary(got)
            tally.refused.append(sent)
            await asyncio.sleep(0.2)
        elif not texts(got):
            tally.empty.append((sent, summary(got)))
        else:
            tally.answered.append(sent)
    await client.close()


async def test_turn_numbers_are_on_the_replica_once_handed_out(
        sentinel_redis: SentinelRedis) -> None:
    """begin_turn WAITs for the replica: a failover right after cannot hand a number out twice
    (runs before the failover test, while the first primary and its replica are up)."""
    r = connect(settings_for(sentinel_redis), name="test")
    replica = connect(Settings(REDIS_URL=sentinel_redis.replica.url), name="test-replica")
    try:
        for _ in range(20):
            n = (await begin_turn(r, "durable-test")).turn
            assert int(await replica.get(keys.turn_counter("durable-test")) or 0) == n
    finally:
        await r.aclose()
        await replica.aclose()


async def test_services_follow_the_promoted_replica(system: TextSystem,
                                                    sentinel_redis: SentinelRedis) -> None:
    stop, tally = asyncio.Event(), Tally()
    talkers = [asyncio.create_task(talk(system.gateway_port, n, stop, tally)) for n in range(8)]
    await asyncio.sleep(3)
    old = sentinel_redis.primary_port()
    killed_at = time.monotonic()
    sentinel_redis.primary.stop()  # kill -9: no goodbye to anyone
    await asyncio.to_thread(sentinel_redis.wait_failover, old)
    promoted_at = time.monotonic()
    assert sentinel_redis.primary_port() == sentinel_redis.replica.port
    await asyncio.sleep(8)
    stop.set()
    await asyncio.gather(*talkers)
    after = [t for t in tally.answered if t > promoted_at]
    print(f"failover took {promoted_at - killed_at:.1f} s; turns answered {len(tally.answered)}, "
          f"after the failover {len(after)}; refused during it {len(tally.refused)}; "
          f"lost {len(tally.lost)}; empty {len(tally.empty)}")
    print("empty", [(round(t - killed_at, 2), g) for t, g in tally.empty])
    print("lost", [(round(t - killed_at, 2), g) for t, g in tally.lost])
    print("refused", [round(t - killed_at, 2) for t in tally.refused])
    # Every turn sent once the replica was promoted got its answer, from every client.
    assert not [t for t, _ in tally.lost if t > promoted_at], tally.lost
    assert not [t for t in tally.refused if t > promoted_at + 1.0], tally.refused
    assert len(after) >= 8
    # And nothing went silent during it either: a turn was answered or the client was told.
    assert not tally.lost, tally.lost
    assert not tally.empty, tally.empty
    # A new client is served by the new primary.
    client = await Client.connect(system.gateway_port)
    await client.say("what is on the menu?")
    got = await client.until(is_signal(ENDED), timeout=15)
    assert any("pepperoni" in t.lower() for t in texts(got)), summary(got)
    await client.close()
