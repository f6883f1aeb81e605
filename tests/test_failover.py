"""Replicas dying, replicas stopping, and Redis itself going away, under live sessions."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from shared import keys, topology
from shared.keys import Stage
from shared.messages import Reply, session_of
from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, holder_of, is_signal, summary, texts

ENDED = "agent_ended_thinking"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def system(own_redis: RedisServer) -> Iterator[TextSystem]:
    own_redis.stop()
    own_redis.start()  # every test starts from an empty Redis
    env = make_env(own_redis, 0, GUARDRAILS_AGENT_HOST="", LEASE_MS="2000", SESSION_TTL_S="6")
    system = TextSystem(own_redis, 0, env)
    try:
        system.start_text_pipeline(guardrails=False)
        yield system
    finally:
        system.stop_all()


async def owner_of(r: aioredis.Redis, sid: str, stage: Stage = Stage.AGENT_BRIDGE) -> str:
    """The name of the replica of ``stage`` that owns the session (holds its partition)."""
    for _ in range(50):
        holder = await holder_of(r, sid, stage)
        if holder is not None:
            return holder
        await asyncio.sleep(0.1)
    raise AssertionError(f"nobody owns session {sid}")


async def newest_session(r: aioredis.Redis, known: set[bytes]) -> str:
    (record,) = set(await r.keys("xrx:{*}:session")) - known
    return cast(bytes, record).decode().split("{")[1].split("}")[0]


async def turn(client: Client, text: str, timeout: float = 30) -> list:
    await client.say(text)
    return await client.until(is_signal(ENDED), timeout)


async def owned_session(system: TextSystem) -> tuple[aioredis.Redis, Client, str, str]:
    """A fresh session after one turn: Redis, its client, its id and its agent-bridge owner."""
    r = aioredis.from_url(system.redis_url)
    client = await Client.connect(system.gateway_port)
    sid = await newest_session(r, set())
    await turn(client, "hello")
    return r, client, sid, await owner_of(r, sid)


async def test_killed_replica_sessions_are_taken_over(system: TextSystem) -> None:
    r, client, sid, owner = await owned_session(system)
    system.procs[owner].kill()  # no goodbye: its lease (2 s here) has to run out
    got = await turn(client, "what is on the menu?", timeout=30)
    assert any("pepperoni" in t.lower() for t in texts(got)), summary(got)
    assert await owner_of(r, sid) != owner
    await client.close()
    await r.aclose()


async def test_turn_rerun_after_a_crash_reaches_the_client_once(system: TextSystem) -> None:
    r, client, sid, owner = await owned_session(system)
    await client.say("count for me [stream=6]")
    got = await client.until(lambda m: isinstance(m, dict) and "Part 2" in m.get("content", ""))
    system.procs[owner].kill()  # mid-turn: the new owner runs the whole turn again
    got += await client.until(lambda m: isinstance(m, dict) and "Part 6" in m.get("content", ""),
                              timeout=30)
    got += await client.until(is_signal(ENDED), timeout=10)
    got += await client.drain(1.0)
    parts = [t for t in texts(got) if t.startswith("Part ")]
    assert parts == [f"Part {i} of 6." for i in range(1, 7)], summary(got)
    signals = [m["content"] for m in got if isinstance(m, dict) and m["type"] == "action"]
    assert signals.count("agent_started_thinking") == 1, summary(got)
    assert signals.count(ENDED) == 1, summary(got)
    # The user's message is in the history once, however often the turn ran.
    history = [json.loads(m) for m in await r.lrange(keys.history(sid), 0, -1)]
    assert [m["content"] for m in history if m["role"] == "user"] == [
        "hello", "count for me [stream=6]"], history
    await client.close()
    await r.aclose()


async def test_sessions_of_a_vanished_gateway_are_reaped(system: TextSystem) -> None:
    r, _client, sid, _ = await owned_session(system)
    system.procs["gateway"].kill()  # no close: the session record's TTL (6 s here) runs out
    for _ in range(150):
        # The history always has a TTL (24 h while live): reaped, it is 30 s at most.
        if (not await r.exists(keys.session_record(sid))
                and 0 < await r.ttl(keys.history(sid)) <= 30):
            break
        await asyncio.sleep(0.1)
    assert not await r.exists(keys.session_record(sid))
    for key in (keys.history(sid), keys.agent_session(sid)):
        assert 0 < await r.ttl(key) <= 30, key  # expiring: nothing of it stays behind
    await r.aclose()


async def test_sigterm_finishes_the_running_turn_then_hands_the_session_over(
        system: TextSystem) -> None:
    r, client, sid, owner = await owned_session(system)
    await client.say("count for me [stream=4]")
    await client.until(lambda m: isinstance(m, dict) and "Part 1" in m.get("content", ""))
    proc = system.procs[owner]
    await asyncio.to_thread(proc.terminate)
    assert proc.proc is not None and proc.proc.returncode == 0, proc.logs()
    got = await client.until(is_signal(ENDED), timeout=20)
    # The acknowledged turn was completed, not lost: every part arrived.
    assert [t for t in texts(got) if t.startswith("Part ")][-1].startswith("Part 4"), summary(got)
    # The other replica has the session at once, without waiting out a lease.
    got = await turn(client, "hello", timeout=10)
    assert texts(got)
    assert await owner_of(r, sid) != owner
    await client.close()
    await r.aclose()


async def test_redis_restart_is_survived_with_a_clear_error_meanwhile(
        system: TextSystem) -> None:
    client = await Client.connect(system.gateway_port)
    await turn(client, "hello")
    system.redis.stop()
    await client.say("hello?")
    msg = await client.next(10)
    assert msg["user"] == "system" and msg["type"] == "error"
    assert "temporarily unavailable" in msg["content"]
    system.redis.start()  # empty: Redis kept nothing
    deadline = time.monotonic() + 45
    while True:
        await client.say("what is on the menu?")
        got = await client.drain(4)
        if any("pepperoni" in t.lower() for t in texts(got)):
            break
        assert time.monotonic() < deadline, summary(got)
    # No new client is refused once it is back: the first use of every pooled connection
    # (each dead since the restart) is retried on a fresh one.
    fresh = await asyncio.gather(*[Client.connect(system.gateway_port) for _ in range(50)])
    await asyncio.gather(*[turn(c, "hello") for c in fresh])
    await asyncio.gather(*[c.close() for c in [client, *fresh]])



async def test_a_replica_paused_past_its_lease_writes_nothing_when_it_wakes(
        system: TextSystem) -> None:
    """SIGSTOP for longer than the lease: another replica takes the session over and runs
    the turn again; on SIGCONT the paused one finds its lease gone and writes nothing more
    (checked in Redis itself, below the gateway's deduplication of numbered outputs)."""
    r, client, sid, owner = await owned_session(system)
    await client.say("count for me [stream=8]")
    await client.until(lambda m: isinstance(m, dict) and "Part 2" in m.get("content", ""))
    proc = system.procs[owner].proc
    assert proc is not None
    stream = keys.reply_partition(topology.partition_of(sid))
    proc.send_signal(signal.SIGSTOP)
    # What the paused replica wrote before it stopped (the client may not have it yet) does
    # not count: only what is written from here on.
    paused_at = cast(bytes, (await r.xinfo_stream(stream))["last-generated-id"])
    try:
        for _ in range(100):
            if await holder_of(r, sid, Stage.AGENT_BRIDGE) not in (None, owner):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("nobody took the paused replica's session over")
    finally:
        proc.send_signal(signal.SIGCONT)
    got = await client.until(lambda m: isinstance(m, dict) and "Part 8" in m.get("content", ""),
                             timeout=30)
    got += await client.until(is_signal(ENDED), timeout=15)
    got += await client.drain(2.0)
    parts = [t for t in texts(got) if t.startswith("Part ")]
    assert parts == [f"Part {i} of 8." for i in range(3, 9)], summary(got)
    written = [Reply.decode(f).content
               for _, f in cast(list[tuple[bytes, dict[bytes, bytes]]],
                                await r.xrange(stream, min=b"(" + paused_at))
               if session_of(f) == sid]
    for i in range(3, 9):
        # Once by the replica that took over; the woken one was stopped by its lost lease.
        assert written.count(f"Part {i} of 8.") == 1, written
    await client.close()
    await r.aclose()


async def test_400_clients_connect_and_1000_close_at_once(system: TextSystem) -> None:
    """The gateway's Redis pool waits for a free connection instead of refusing (503) a
    client or leaving a session unclosed when hundreds arrive or leave together."""
    r = aioredis.from_url(system.redis_url)
    clients = await asyncio.gather(*[Client.connect(system.gateway_port) for _ in range(400)],
                                   return_exceptions=True)
    refused = [c for c in clients if not isinstance(c, Client)]
    assert not refused, refused[:3]
    clients += await asyncio.gather(*[Client.connect(system.gateway_port) for _ in range(600)])
    assert len(await r.keys("xrx:{*}:session")) == 1000
    await asyncio.gather(*[c.close() for c in clients if isinstance(c, Client)])
    for _ in range(100):
        if not await r.keys("xrx:{*}:session"):
            break
        await asyncio.sleep(0.1)
    assert not await r.keys("xrx:{*}:session")  # every session closed, none left to the TTL
    await r.aclose()
