"""A client session's life in Redis: opened on connect, kept alive, closed on disconnect.

Opening writes only the session record: the stages own a session through the partition its
id hashes to, so there is nothing to offer them and no window in which a session exists
without owners.
"""

from __future__ import annotations

import time
from typing import cast

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
    await r.sadd(keys.partition_sessions(topology.partition_of(sid)), sid)


async def discard_session(r: Redis, sid: str) -> None:
    """Undo an ``open_session`` the client never saw (it left during the handshake): only the
    record was written, and no stage has heard of the session."""
    await r.delete(keys.session_record(sid))


# Extend a record's TTL only while it names this gateway: 1 extended, 0 gone, -1 taken over
# by another gateway (the client resumed the session elsewhere).
_REFRESH_IF_MINE = """
local gw = redis.call('HGET', KEYS[1], ARGV[1])
if not gw then return 0 end
if gw ~= ARGV[2] then return -1 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


async def refresh_sessions(r: Redis, sids: list[str], ttl_s: int,
                           gateway_id: str) -> tuple[list[str], list[str]]:
    """Extend the TTL of the sessions this gateway still holds; return those whose record is
    gone (Redis lost it) and those another gateway took over."""
    if not sids:
        return [], []
    async with r.pipeline(transaction=False) as p:
        for sid in sids:
            p.eval(_REFRESH_IF_MINE, 1, keys.session_record(sid), keys.RECORD_GATEWAY,
                   gateway_id, ttl_s)
        results = await p.execute()
    lost = [sid for sid, res in zip(sids, results, strict=True) if res == 0]
    moved = [sid for sid, res in zip(sids, results, strict=True) if res == -1]
    return lost, moved


async def turn_state(r: Redis, sid: str) -> tuple[int, int]:
    """The session's fence and its last turn number."""
    fence, last = await r.mget(keys.fence(sid), keys.turn_counter(sid))
    return int(fence or 0), int(last or 0)


async def held_elsewhere(r: Redis, sid: str, gateway_id: str) -> bool:
    """Whether another gateway took the session over (a client that resumed it there)."""
    raw = cast(bytes | None, await r.hget(keys.session_record(sid), keys.RECORD_GATEWAY))
    return raw is not None and raw.decode() != gateway_id


async def close_session(r: Redis, sid: str) -> None:
    """Tell every stage the session is over, then let its keys expire."""
    async with r.pipeline(transaction=False) as p:
        p.delete(keys.session_record(sid))
        p.srem(keys.partition_sessions(topology.partition_of(sid)), sid)
        for stage, marker in topology.close_markers(sid):
            topology.send(p, stage, marker)
        expire_session(p, sid)
        await p.execute()
