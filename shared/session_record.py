"""The session record (a hash with a TTL kept alive by the gateway) and the session's keys."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys

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


def update_record(w: Redis | Pipeline, sid: str, **fields: str | int) -> Any:
    """Set fields of the record if the session is still open (awaitable on a client, queued
    on a pipeline)."""
    args: list[str | int] = []
    for name, value in fields.items():
        args += [name, value]
    return w.eval(_HSET_IF_OPEN, 1, keys.session_record(sid), *args)


async def clear_record(r: Redis, sid: str, *names: str) -> None:
    await r.hdel(keys.session_record(sid), *names)


async def read_record(r: Redis, sid: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], await r.hgetall(keys.session_record(sid)))
    return {k.decode(): v.decode() for k, v in raw.items()}
