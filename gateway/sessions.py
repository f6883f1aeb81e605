"""A client session's life in Redis: opened on connect, kept alive, closed on disconnect.

Opening writes only the session record: the stages own a session through the partition its
id hashes to, so there is nothing to offer them and no window in which a session exists
without owners.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared import keys, topology
from shared.session_record import expire_session
from shared.turns import STATE_TTL_S


async def open_session(r: Redis, sid: str, gateway_id: str, ttl_s: int,
                       last_turn: int = 0) -> None:
    """Register the session.

    ``last_turn`` re-seeds the turn counter when a session is registered again after Redis
    lost it, so turn numbers keep growing and the client-side fence stays meaningful.
    """
    record = keys.session_record(sid)
    async with r.pipeline(transaction=True) as p:
        p.hset(record, mapping={keys.RECORD_STATUS: "open",
                                keys.RECORD_GATEWAY: gateway_id,
                                keys.RECORD_OPENED_AT: str(time.time())})
        p.expire(record, ttl_s)
        if last_turn:
            p.set(keys.turn_counter(sid), last_turn, nx=True, ex=STATE_TTL_S)
            p.set(keys.fence(sid), last_turn, nx=True, ex=STATE_TTL_S)
        await p.execute()


async def refresh_sessions(r: Redis, sids: list[str], ttl_s: int) -> list[str]:
    """Extend the sessions' TTL; return those whose record is gone (Redis lost it)."""
    if not sids:
        return []
    async with r.pipeline(transaction=False) as p:
        for sid in sids:
            p.expire(keys.session_record(sid), ttl_s)
        extended = await p.execute()
    return [sid for sid, ok in zip(sids, extended, strict=True) if not ok]


async def close_session(r: Redis, sid: str) -> None:
    """Tell every stage the session is over, then let its keys expire."""
    async with r.pipeline(transaction=False) as p:
        p.delete(keys.session_record(sid))
        for stage, marker in topology.close_markers(sid):
            topology.send(p, stage, marker)
        expire_session(p, sid)
        await p.execute()
