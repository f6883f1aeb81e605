"""The session record (a hash with a TTL kept alive by the gateway) and the session's keys."""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from shared import keys

# Long enough for every stage to read a close marker and finish, short enough to bound memory.
CLOSED_KEYS_TTL_S = 30


def expire_session(p: Pipeline, sid: str) -> None:
    """Queue the expiry of every key of an ended session on pipeline ``p``."""
    for key in keys.session_keys(sid):
        p.expire(key, CLOSED_KEYS_TTL_S)
