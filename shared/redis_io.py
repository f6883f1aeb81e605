"""Redis connection helpers and the few atomic operations every stage shares."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlparse

import structlog
from prometheus_client import Counter
from redis import Redis as SyncRedis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.sentinel import Sentinel as SyncSentinel

from shared.config import Settings
from shared.redis_hot_path import CLIENT, POOL_BASE, lean

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


# Connections per process when REDIS_MAX_CONNECTIONS is 0: the gateway serves hundreds of
# sockets, each opening, closing and publishing on its own; a worker runs one read loop plus
# its sessions' writes. redis-py's default (a non-blocking pool) refused the 101st caller.
DEFAULT_MAX_CONNECTIONS = {"gateway": 200}
WORKER_MAX_CONNECTIONS = 50
# A connection idle this long is PINGed before it is used again, so one that died with a
# Redis restart is replaced before a command is sent on it.
HEALTH_CHECK_INTERVAL_S = 5

# Replicas that must hold a "durable" write before it counts (see queue_wait), and how long to
# wait for them; set by connect() in Sentinel mode, off otherwise (no cost without replicas).
_wait: tuple[int, int] | None = None

WAIT_SHORT = Counter("xrx_redis_wait_short_total",
                     "Durable writes that fewer replicas acknowledged than REDIS_WAIT_REPLICAS "
                     "within REDIS_WAIT_MS (a failover now would lose them)")


class BlockingSentinelPool(SentinelConnectionPool, POOL_BASE):  # type: ignore[misc,valid-type]
    """A Sentinel-managed pool that waits for a free connection instead of failing at once."""


def _retry(retries: int) -> Retry:
    # redis.asyncio's Retry: the synchronous redis.retry.Retry, given to an asyncio client,
    # returns the coroutine without awaiting it and never retries anything.
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)


def _keepalive() -> dict[int, int]:
    """Notice a peer that vanished without closing (a dead node) within ~10 s, not hours."""
    opts = {}
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            opts[getattr(socket, name)] = value
    return opts


def connect(settings: Settings, *, name: str = "xrx", retries: int = 3) -> Redis:
    """The process's client: a blocking pool sized for it, transient failures retried with
    exponential backoff (``retries`` times: 0 for a caller that must see every failure), and
    in Sentinel mode the current primary followed across failovers."""
    global _wait
    max_connections = settings.REDIS_MAX_CONNECTIONS or DEFAULT_MAX_CONNECTIONS.get(
        name, WORKER_MAX_CONNECTIONS)
    common: dict[str, Any] = dict(
        decode_responses=False,
        client_name=name,
        socket_connect_timeout=3,
        # Longer than any blocking read here (5 s at most); redis-py's default is 5 s.
        socket_timeout=30,
        socket_keepalive=True,
        socket_keepalive_options=_keepalive(),
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=_retry(retries),
        retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
        max_connections=max_connections,
        timeout=settings.REDIS_POOL_TIMEOUT_S,
    )
    if settings.REDIS_PASSWORD:
        common["password"] = settings.REDIS_PASSWORD
    sentinels = settings.redis_sentinels
    if not sentinels:
        if "password" in common and urlparse(settings.redis_url).password:
            del common["password"]  # the URL's own password wins
        pool = POOL_BASE.from_url(settings.redis_url, **common)
        return CLIENT.from_pool(lean(pool))
    _wait = (settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_MS) \
        if settings.REDIS_WAIT_REPLICAS else None
    # Asking the sentinels must be quick: a dead one is skipped for the next.
    sentinel_kwargs: dict[str, Any] = dict(socket_timeout=1, socket_connect_timeout=1)
    if settings.REDIS_PASSWORD:
        sentinel_kwargs["password"] = settings.REDIS_PASSWORD
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    # check_connection: PING a new connection, so one to a stale address fails here, retried.
    client = cast(Redis, manager.master_for(settings.REDIS_SENTINEL_MASTER, redis_class=CLIENT,
                                            connection_pool_class=BlockingSentinelPool,
                                            check_connection=True, **common))
    lean(client.connection_pool)
    return client


def queue_wait(p: Pipeline) -> bool:
    """Queue ``WAIT`` on ``p`` after a write that must survive the primary's death.

    WAIT holds this connection until enough replicas acknowledged every write made before it
    (replication is ordered, so that covers this pipeline and anything earlier). Only in
    Sentinel mode; returns whether it was queued, so the caller checks the last result with
    :func:`check_wait`.
    """
    if _wait is None:
        return False
    p.execute_command("WAIT", *_wait)
    return True


def check_wait(acked: Any) -> None:
    if _wait is not None and int(acked) < _wait[0]:
        WAIT_SHORT.inc()


async def durable(p: Pipeline) -> list[Any]:
    """Execute ``p`` (WAITing for the replicas in Sentinel mode); return its results without
    the WAIT's."""
    waited = queue_wait(p)
    results = cast(list[Any], await p.execute())
    if waited:
        check_wait(results.pop())
    return results


def connect_sync(settings: Settings, *, name: str = "xrx") -> SyncRedis:
    """A blocking client, for the one thing done off the event loop (lease renewal); in
    Sentinel mode it follows the primary too."""
    common: dict[str, Any] = dict(client_name=name, socket_connect_timeout=3, socket_timeout=3)
    if settings.REDIS_PASSWORD:
        common["password"] = settings.REDIS_PASSWORD
    sentinels = settings.redis_sentinels
    if not sentinels:
        if "password" in common and urlparse(settings.redis_url).password:
            del common["password"]
        return SyncRedis.from_url(settings.redis_url, **common)
    sentinel_kwargs: dict[str, Any] = dict(socket_timeout=1, socket_connect_timeout=1)
    if "password" in common:
        sentinel_kwargs["password"] = common["password"]
    manager = SyncSentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    return manager.master_for(settings.REDIS_SENTINEL_MASTER, redis_class=SyncRedis,
                              check_connection=True, **common)


@asynccontextmanager
async def redis_client(settings: Settings, *, name: str = "xrx") -> AsyncIterator[Redis]:
    client = connect(settings, name=name)
    try:
        yield client
    finally:
        await client.aclose()


# Cached: every session of an audio batch entry parses the entry's id, twice.
@functools.lru_cache(maxsize=4096)
def id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream id as a sortable pair (bytes compare wrongly: b"9-0" > b"10-0")."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def time_ms(reply: Any) -> int:
    """A ``TIME`` reply (seconds, microseconds) in ms: the clock stream entry ids use."""
    secs, micros = reply
    return int(secs) * 1000 + int(micros) // 1000


async def redis_now_ms(r: Redis) -> int:
    """Redis's clock, in ms."""
    return time_ms(await r.time())


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
