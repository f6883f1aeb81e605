"""The lean Redis round trip (shared/redis_hot_path.py) behaves as redis-py's: the same bytes
on the wire, the same replies and errors, connections reused, a dead or dirty connection
never handed out, callers beyond the pool's size waiting for a free connection, a reply that
never comes still timing out; and every stage's client takes that path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from shared.config import Settings
from shared.redis_hot_path import KNOWN, POOL_BASE, LeanConnection, lean
from shared.redis_io import connect
from tests.conftest import flushed_db
from tests.harness import RedisServer

DB = 14

COMMANDS: list[tuple[Any, ...]] = [
    (b"XADD", b"s", b"*", b"pcm", b"\x00\xff" * 5000, "text", "naïve café ☕"),
    ("SET", "k", 12, "EX", 30),
    (b"ZADD", b"z", 1.5, b"m", -3, b"n"),
    ("CLIENT SETNAME", "gw"),  # a two-word command name goes as two words
    (b"EVALSHA", b"ab" * 20, 2, b"k1", b"k2", b""),
]


class PlainLean(LeanConnection, Connection):
    pass


@pytest.mark.parametrize("args", COMMANDS)
def test_hiredis_packs_what_redis_py_packs(args: tuple[Any, ...]) -> None:
    python = b"".join(Connection().pack_command(*args))
    assert b"".join(PlainLean().pack_command(*args)) == python


def test_a_pipeline_packs_to_its_commands_in_order() -> None:
    python = b"".join(Connection().pack_commands(COMMANDS))
    assert b"".join(PlainLean().pack_commands(COMMANDS)) == python


@pytest.mark.parametrize("bad", [None, True, {"a": 1}])
def test_a_value_redis_cannot_take_is_a_data_error(bad: object) -> None:
    with pytest.raises(rexc.DataError, match="cannot send"):
        PlainLean().pack_command(b"SET", b"k", bad)


@pytest.mark.skipif(not KNOWN, reason="redis-py's own client on this redis-py version")
def test_every_connection_class_gets_the_lean_path() -> None:
    for url in ("redis://h:1/0", "rediss://h:1/0", "unix:///tmp/r.sock"):
        client = Redis.from_url(url)
        made = lean(client.connection_pool).make_connection()
        assert isinstance(made, LeanConnection)
        if url.startswith("unix"):
            assert isinstance(made, UnixDomainSocketConnection)


@pytest.mark.skipif(not KNOWN, reason="redis-py's own client on this redis-py version")
async def test_a_sentinel_connection_still_turns_readonly_into_a_connection_error(
        redis_server: RedisServer) -> None:
    """A primary demoted to a replica answers writes with READONLY; Sentinel's connection
    class turns that into a ConnectionError (so the call is retried on the new primary),
    and the lean read path must not answer before it."""
    class Pool:  # what the connection asks of its Sentinel pool
        is_master = True
        check_connection = False

        async def get_master_address(self) -> tuple[str, int]:
            return "127.0.0.1", redis_server.port

    from redis.asyncio.sentinel import SentinelConnectionPool
    pool = SentinelConnectionPool("mymaster", None)
    lean(pool)
    conn: Any = pool.connection_class(connection_pool=Pool())  # type: ignore[call-arg]
    assert isinstance(conn, LeanConnection)
    await conn.connect()
    try:
        # Two commands in one send, as a pipeline: the READONLY reply is already buffered
        # when it is read (the lean path's case).
        await conn.send_packed_command(conn.pack_commands([
            ("PING",), ("EVAL", "return redis.error_reply('READONLY demoted')", 0)]))
        assert await conn.read_response() in (b"PONG", "PONG")
        with pytest.raises(rexc.ConnectionError, match=r"now a (slave|replica)"):
            await conn.read_response()
    finally:
        await conn.disconnect()


def settings_for(server: RedisServer, **extra: Any) -> Settings:
    return Settings(REDIS_URL=f"redis://127.0.0.1:{server.port}/{DB}", **extra)


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with flushed_db(redis_server, DB):
        client = connect(settings_for(redis_server), name="hot-path-test")
        yield client
        await client.aclose()


async def test_values_and_errors_round_trip_through_redis(r: Redis) -> None:
    assert isinstance(r.connection_pool, POOL_BASE)
    pcm = bytes(range(256)) * 200  # larger than redis-py's 6,000-byte chunking cutoff
    async with r.pipeline(transaction=False) as p:
        p.set("text", "naïve café ☕")
        p.set("pcm", pcm)
        p.set("n", 42)
        p.get("text")
        p.lpush("text", "x")  # WRONGTYPE: an error in the middle of the replies
        p.get("pcm")
        p.incrby("n", 1)
        p.hgetall("missing")
        *_, text, wrong, got_pcm, n, empty = await p.execute(raise_on_error=False)
    assert text.decode() == "naïve café ☕"
    assert isinstance(wrong, rexc.ResponseError) and "WRONGTYPE" in str(wrong)
    assert got_pcm == pcm
    assert n == 43
    assert empty == {}  # redis-py's reply callbacks still apply
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"):
        await r.lpush("text", "x")
    assert await r.get("n") == b"43"  # the connection is still in step after an error
    with pytest.raises(rexc.DataError):
        await r.set("k", None)  # type: ignore[arg-type]


async def test_one_connection_serves_calls_made_one_after_another(r: Redis) -> None:
    for _ in range(20):
        await r.incr("n")
    assert len(r.connection_pool._available_connections) == 1
    assert int(await r.get("n") or 0) == 20


async def test_a_connection_killed_by_the_server_is_replaced(r: Redis) -> None:
    await r.set("k", "v")
    await r.client_kill_filter(_type="normal", skipme=False)
    # The pooled connection is dead; the next call must not fail because of it (redis-py
    # retries a connection error on a fresh connection).
    assert await r.get("k") == b"v"


@pytest.mark.skipif(not KNOWN, reason="redis-py's own pool on this version hands it out")
async def test_a_connection_holding_an_unread_reply_is_not_handed_out(r: Redis) -> None:
    await r.set("k", "v")
    conn = await r.connection_pool.get_connection()
    await conn.send_command("PING")  # its reply is never read
    await asyncio.sleep(0.05)
    await r.connection_pool.release(conn)
    # Handed out as it is, the next caller would read "PONG" for its GET.
    assert await r.get("k") == b"v"


async def test_callers_beyond_the_pool_size_wait_their_turn(redis_server: RedisServer) -> None:
    async with flushed_db(redis_server, DB):
        client = connect(settings_for(redis_server, REDIS_MAX_CONNECTIONS=2), name="small")
        try:
            # 10 blocking reads on a pool of 2: all finish, two at a time.
            results = await asyncio.gather(*(client.blpop([f"q{i}"], timeout=0.1)
                                             for i in range(10)))
            assert results == [None] * 10
            assert len(client.connection_pool._available_connections) == 2
        finally:
            await client.aclose()


async def test_a_reply_that_never_comes_still_times_out(redis_server: RedisServer) -> None:
    async with flushed_db(redis_server, DB):
        client = Redis.from_pool(lean(POOL_BASE.from_url(
            f"redis://127.0.0.1:{redis_server.port}/{DB}", socket_timeout=0.2)))
        try:
            with pytest.raises(rexc.TimeoutError):
                await client.blpop(["never"], timeout=2)
            assert await client.ping()
        finally:
            await client.aclose()


async def test_pipelines_beyond_the_pool_size_and_cancelled_ones_leave_it_sound(
        redis_server: RedisServer) -> None:
    async with flushed_db(redis_server, DB):
        client = connect(settings_for(redis_server, REDIS_MAX_CONNECTIONS=3), name="small")
        pool = client.connection_pool

        async def bump(i: int) -> list[Any]:
            async with client.pipeline(transaction=False) as p:
                p.incr(f"n{i % 5}")
                p.get(f"n{i % 5}")
                return await p.execute()

        try:
            # 40 pipelines on a pool of 3, then a burst cancelled mid-flight.
            results = await asyncio.gather(*(bump(i) for i in range(40)))
            assert all(int(count) == int(got) for count, got in results)
            tasks = [asyncio.create_task(bump(i)) for i in range(30)]
            await asyncio.sleep(0)
            await asyncio.sleep(0.0005)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert not pool._in_use_connections
            assert len(pool._available_connections) <= 3
            # Every connection left in the pool answers its own command.
            for i in range(10):
                assert await client.set(f"k{i}", i)
                assert await client.get(f"k{i}") == str(i).encode()
        finally:
            await client.aclose()
