"""Redis connection helpers and the few atomic operations every stage shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import structlog
from redis import Redis as SyncRedis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = structlog.get_logger(__name__)

# Errors after which the same call can succeed once Redis is back.
TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, ConnectionError, OSError)

Fields = dict[bytes, bytes]
StreamBatch = list[tuple[bytes, list[tuple[bytes, Fields]]]]


async def read_streams(r: Redis, streams: dict[str, bytes], *, count: int,
                       block_ms: int) -> StreamBatch:
    """XREAD over several streams, typed (redis-py returns ``Any``)."""
    resp = await r.xread(streams, count=count, block=block_ms)  # type: ignore[arg-type]
    return cast(StreamBatch, resp or [])


async def read_group(r: Redis, group: str, consumer: str, streams: dict[str, str], *,
                     count: int, block_ms: int | None = None) -> StreamBatch:
    """XREADGROUP over several streams, typed."""
    resp = await r.xreadgroup(group, consumer, streams,  # type: ignore[arg-type]
                              count=count, block=block_ms)
    return cast(StreamBatch, resp or [])


def connect(url: str, *, name: str = "xrx") -> Redis:
    """A client that retries transient failures with exponential backoff."""
    return Redis.from_url(
        url,
        decode_responses=False,
        client_name=name,
        socket_connect_timeout=3,
        # Longer than any blocking read here (5 s at most); redis-py's default is 5 s.
        socket_timeout=30,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
    )


def connect_sync(url: str, *, name: str = "xrx") -> SyncRedis:
    """A blocking client, for the one thing done off the event loop (lease renewal)."""
    return SyncRedis.from_url(url, client_name=name, socket_connect_timeout=3,
                              socket_timeout=3)


@asynccontextmanager
async def redis_client(url: str, *, name: str = "xrx") -> AsyncIterator[Redis]:
    client = connect(url, name=name)
    try:
        yield client
    finally:
        await client.aclose()


async def ping(r: Redis) -> bool:
    try:
        return bool(await r.ping())
    except TRANSIENT:
        return False


class Backoff:
    """Sleeps growing from ``base`` to ``cap`` seconds; ``reset`` after a success."""

    def __init__(self, base: float = 0.1, cap: float = 2.0) -> None:
        self.base, self.cap, self._next = base, cap, base

    async def sleep(self) -> None:
        await asyncio.sleep(self._next)
        self._next = min(self.cap, self._next * 2)

    def reset(self) -> None:
        self._next = self.base


async def ensure_group(r: Redis, stream: str, group: str) -> None:
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except rexc.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise
