"""Conversations that survive the gateway: a client resumes its session, on the same or
another gateway, with its session id and the id of the last reply it received."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import keys
from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, free_port, is_signal, summary, texts, wait_ready

STARTED, ENDED = "agent_started_thinking", "agent_ended_thinking"
TTL_S = 6


@pytest.fixture(scope="module")
def system(redis_server: RedisServer) -> Iterator[TextSystem]:
    env = make_env(redis_server, 4, GUARDRAILS_AGENT_HOST="", SESSION_TTL_S=str(TTL_S))
    system = TextSystem(redis_server, 4, env)
    try:
        system.start_text_pipeline(guardrails=False)
        yield system
    finally:
        system.stop_all()


async def connect(port: int, **params: str) -> Client:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/api/v1/ws?{query}",
                                  additional_headers={"x-api-key": "123456"}, max_size=None)
    return Client(ws)


async def session_message(client: Client) -> dict[str, Any]:
    msg = await client.next()
    assert msg["user"] == "system" and msg["type"] == "session", msg
    return cast(dict[str, Any], msg["content"])


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def drop(client: Client) -> None:
    """Lose the connection without a close frame, as a network failure does (1006)."""
    transport = client.ws.transport
    assert transport is not None
    transport.abort()


async def record_of(r: aioredis.Redis, sid: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], await r.hgetall(keys.session_record(sid)))


async def wait_record_gone(r: aioredis.Redis, sid: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout * 10)):
        if not await r.exists(keys.session_record(sid)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} still open after {timeout}s")


async def test_killed_gateway_resumed_on_another_replays_what_was_missed_once(
        system: TextSystem) -> None:
    port = free_port()
    doomed = system.start("gateway-c", "gateway", port, GATEWAY_PORT=str(port))
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    r = aioredis.from_url(system.redis_url)
    client = await connect(port, session_info="1")
    info = await session_message(client)
    sid = info["session_id"]
    assert info["resumed"] is False and len(sid) == 32

    await client.say("I'd like a large pepperoni")
    before = await client.until(is_signal(ENDED))
    assert all("id" in m for m in before), summary(before)  # every reply has its id
    await client.say("count for me [stream=6]")
    got = await client.until(lambda m: "Part 2 of 6" in str(m.get("content")))
    last_id = got[-1]["id"]
    assert [m["content"] for m in got][-2:] == ["Part 1 of 6.", "Part 2 of 6."], summary(got)

    doomed.kill()  # kill -9: no goodbye to the client or to Redis
    await asyncio.sleep(1.2)  # Part 3 and 4 are written while nobody is there to send them

    resumed = await connect(system.gateway_port, session_id=sid, last_id=last_id)
    info = await session_message(resumed)
    assert info["session_id"] == sid and info["resumed"] is True, info
    assert info["replayed"] >= 2, info
    got = await resumed.until(is_signal(ENDED))
    got += await resumed.drain(1.0)
    assert texts(got) == [f"Part {i} of 6." for i in range(3, 7)], summary(got)
    assert [m["content"] for m in got if m["type"] == "action"] == [ENDED], summary(got)
    ids = [id_key(m["id"]) for m in got]
    assert ids == sorted(set(ids)) and ids[0] > id_key(last_id), ids
    assert (await record_of(r, sid))[keys.RECORD_GATEWAY.encode()] == b"gateway"

    # The conversation goes on with its history: the order placed before the gateway died.
    await resumed.say("what's my order")
    got = await resumed.until(is_signal(ENDED))
    assert "pepperoni" in json.dumps(got).lower(), summary(got)
    history = [json.loads(m) for m in await r.lrange(keys.history(sid), 0, -1)]
    assert "pepperoni" in history[0]["content"] and len(history) >= 5, history
    await resumed.close()
    await wait_record_gone(r, sid)  # a normal close ends the session
    await r.aclose()


async def test_dropped_connection_keeps_the_session_and_a_normal_close_ends_it(
        system: TextSystem) -> None:
    r = aioredis.from_url(system.redis_url)
    client = await connect(system.gateway_port, session_info="true")
    sid = (await session_message(client))["session_id"]
    await client.say("count for me [stream=3]")
    got = await client.until(lambda m: "Part 1 of 3" in str(m.get("content")))
    drop(client)
    await asyncio.sleep(2.0)  # the rest of the turn is written meanwhile
    assert await r.exists(keys.session_record(sid))  # kept for a resume

    again = await connect(system.gateway_port, session_id=sid, last_id=got[-1]["id"])
    info = await session_message(again)
    assert info == {"session_id": sid, "resumed": True, "replayed": 3}, info
    got = await again.until(is_signal(ENDED))
    assert texts(got) == ["Part 2 of 3.", "Part 3 of 3."], summary(got)
    await again.close()
    await wait_record_gone(r, sid)

    # Gone for good: asking for it again gives a new session, and says so.
    late = await connect(system.gateway_port, session_id=sid, last_id=got[-1]["id"])
    info = await session_message(late)
    assert info["resumed"] is False and info["session_id"] != sid, info
    assert "expired" in info["reason"]
    await late.close()
    await r.aclose()


async def test_session_nobody_resumes_is_reaped_after_the_window(system: TextSystem) -> None:
    r = aioredis.from_url(system.redis_url)
    client = await connect(system.gateway_port, session_info="1")
    sid = (await session_message(client))["session_id"]
    drop(client)
    await asyncio.sleep(1.0)
    assert await r.exists(keys.session_record(sid))
    await wait_record_gone(r, sid, timeout=TTL_S + 2)  # SESSION_TTL_S after the drop
    await asyncio.sleep(6.0)  # the agent bridge's reaper expires its keys (30 s later)
    assert 0 < await r.ttl(keys.fence(sid)) <= 30 or not await r.exists(keys.fence(sid))
    await r.aclose()


async def test_resume_on_the_same_gateway_takes_over_a_connection_still_open(
        system: TextSystem) -> None:
    client = await connect(system.gateway_port, session_info="1")
    sid = (await session_message(client))["session_id"]
    await client.say("hello")
    got = await client.until(is_signal(ENDED))
    second = await connect(system.gateway_port, session_id=sid, last_id=got[-1]["id"])
    info = await session_message(second)
    assert info == {"session_id": sid, "resumed": True, "replayed": 0}, info
    with pytest.raises(ConnectionClosed) as closed:
        await client.next(5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    await second.say("hello again")
    got = await second.until(is_signal(ENDED))
    assert texts(got), summary(got)
    await second.close()


async def test_plain_client_dropping_ends_its_session_as_before(system: TextSystem) -> None:
    r = aioredis.from_url(system.redis_url)
    known = set(await r.keys("xrx:{*}:session"))
    client = await Client.connect(system.gateway_port)
    await client.say("hello")
    got = await client.until(is_signal(ENDED))
    # Nothing new for an xRx client: no session message, no ids.
    assert all(set(m) == {"user", "content", "type"} for m in got), summary(got)
    (record,) = set(await r.keys("xrx:{*}:session")) - known
    sid = cast(bytes, record).decode().split("{")[1].split("}")[0]
    drop(client)
    await wait_record_gone(r, sid)  # it cannot resume, so nothing is kept for it
    await r.aclose()


@pytest.mark.parametrize("query", [
    "session_id=../../etc",  # selects Redis keys: only ids the gateway hands out
    "session_id=" + "A" * 32,
    "session_id=" + "a" * 31,
    "session_id=" + "a" * 32 + "&last_id=abc",
    "last_id=1-0",  # a last reply without a session
])
async def test_malformed_resume_parameters_are_refused_before_accept(
        system: TextSystem, query: str) -> None:
    with pytest.raises(InvalidStatus) as err:
        await websockets.connect(f"ws://127.0.0.1:{system.gateway_port}/api/v1/ws?{query}",
                                 additional_headers={"x-api-key": "123456"})
    assert err.value.response.status_code == 400


async def test_resume_needs_the_api_key(system: TextSystem) -> None:
    client = await connect(system.gateway_port, session_info="1")
    sid = (await session_message(client))["session_id"]
    with pytest.raises(InvalidStatus) as err:
        await websockets.connect(
            f"ws://127.0.0.1:{system.gateway_port}/api/v1/ws?session_id={sid}")
    assert err.value.response.status_code == 401
    await client.close()


async def test_resume_elsewhere_closes_the_old_connection_and_sigterm_keeps_sessions(
        system: TextSystem) -> None:
    port = free_port()
    other = system.start("gateway-d", "gateway", port, GATEWAY_PORT=str(port))
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    r = aioredis.from_url(system.redis_url)

    # Resumed on another gateway while the old connection still looks alive to its gateway:
    # the old gateway notices when it refreshes (SESSION_TTL_S / 3) and closes it with 4001.
    old = await connect(port, session_info="1")
    sid = (await session_message(old))["session_id"]
    await old.say("I'd like a large pepperoni")
    got = await old.until(is_signal(ENDED))
    new = await connect(system.gateway_port, session_id=sid, last_id=got[-1]["id"])
    assert (await session_message(new))["resumed"] is True
    with pytest.raises(ConnectionClosed) as closed:
        await old.next(TTL_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    await asyncio.sleep(0.5)
    assert await r.exists(keys.session_record(sid))  # the old gateway left it alone
    await new.say("what's my order")
    got = await new.until(is_signal(ENDED))
    assert "pepperoni" in json.dumps(got).lower(), summary(got)
    await new.close()

    # A rolling restart: the gateway closes its sockets (1012) and keeps their sessions.
    client = await connect(port, session_info="1")
    sid = (await session_message(client))["session_id"]
    await client.say("hello")
    got = await client.until(is_signal(ENDED))
    other.terminate()
    with pytest.raises(ConnectionClosed):
        await client.next(5)
    assert await r.exists(keys.session_record(sid))
    again = await connect(system.gateway_port, session_id=sid, last_id=got[-1]["id"])
    assert (await session_message(again))["resumed"] is True
    await again.close()
    await r.aclose()
