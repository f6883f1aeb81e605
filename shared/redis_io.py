"""Redis connection helpers and the few atomic operations every stage shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any, cast

import structlog
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import keys
from shared.messages import Reply

log = structlog.get_logger(__name__)

# Errors after which the same call can succeed once Redis is back.
TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, ConnectionError, OSError)

REPLY_MAXLEN = 5000


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


# --- turns and fencing -------------------------------------------------------------------

# A new input starts turn N and kills every earlier turn (fence = N).
_BEGIN_TURN = """
local n = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], n)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""

# Barge-in kills the turn in flight without starting one: the next input gets counter + 1.
_KILL_TURNS = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[2], n + 1)
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""

STATE_TTL_S = 24 * 3600


async def begin_turn(r: Redis, sid: str) -> int:
    n = await r.eval(_BEGIN_TURN, 2, keys.turn_counter(sid), keys.fence(sid), STATE_TTL_S)
    return int(n)


async def kill_turns(r: Redis, sid: str) -> int:
    """Fence every turn started so far; return the last turn killed (0 when none)."""
    n = await r.eval(_KILL_TURNS, 2, keys.turn_counter(sid), keys.fence(sid), STATE_TTL_S)
    return int(n)


async def fence_of(r: Redis, sid: str) -> int:
    raw = await r.get(keys.fence(sid))
    return int(raw) if raw else 0


def is_fenced(turn: int, fence: int) -> bool:
    return turn != 0 and turn < fence


async def publish_reply(r: Redis, sid: str, reply: Reply) -> bytes:
    entry_id = await r.xadd(keys.reply(sid), reply.encode(), maxlen=REPLY_MAXLEN,
                            approximate=True)
    return cast(bytes, entry_id)


# --- the session record -------------------------------------------------------------------

# Long enough for every stage to read a close marker and finish, short enough to bound memory.
CLOSED_KEYS_TTL_S = 30


def expire_session(p: Pipeline, sid: str) -> None:
    """Queue the expiry of every key of an ended session on pipeline ``p``."""
    for key in keys.session_keys(sid):
        p.expire(key, CLOSED_KEYS_TTL_S)

# Workers write to a session's record only while it exists: a write after the gateway closed
# the session must not bring the record back to life.
_HSET_IF_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


async def update_record(r: Redis, sid: str, **fields: str | int) -> bool:
    args: list[str | int] = []
    for name, value in fields.items():
        args += [name, value]
    return bool(await r.eval(_HSET_IF_OPEN, 1, keys.session_record(sid), *args))


_HINCR_IF_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


async def count_in_record(r: Redis, sid: str, name: str) -> int:
    """Increment a counter of the session record; 0 once the session is gone."""
    return int(await r.eval(_HINCR_IF_OPEN, 1, keys.session_record(sid), name))


async def clear_record(r: Redis, sid: str, *names: str) -> None:
    await r.hdel(keys.session_record(sid), *names)


async def read_record(r: Redis, sid: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], await r.hgetall(keys.session_record(sid)))
    return {k.decode(): v.decode() for k, v in raw.items()}


# --- per-session conversation state ------------------------------------------------------


# Appends once per (kind, turn): a turn handled again after a failover appends nothing new.
_APPEND_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return 1
"""


class HistoryKind(StrEnum):
    USER = "user"
    REPLY = "reply"


async def append_history(r: Redis, sid: str, kind: HistoryKind, turn: int,
                         *messages: dict[str, Any]) -> bool:
    """Append ``messages`` unless this turn already appended its ``kind``."""
    if not messages:
        return False
    done = await r.eval(_APPEND_ONCE, 2, keys.history(sid), keys.history_marks(sid), kind,
                        turn, *(json.dumps(m) for m in messages))
    return bool(done)


async def recent_history(r: Redis, sid: str, limit: int) -> list[dict[str, Any]]:
    raw = await r.lrange(keys.history(sid), -limit, -1)
    return [json.loads(m) for m in raw]


async def load_agent_session(r: Redis, sid: str) -> dict[str, Any]:
    raw = await r.get(keys.agent_session(sid))
    return json.loads(raw) if raw else {"guid": sid}


async def store_agent_session(r: Redis, sid: str, session: dict[str, Any]) -> None:
    await r.set(keys.agent_session(sid), json.dumps(session))
