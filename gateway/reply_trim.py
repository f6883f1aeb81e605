"""Keeps the reply partitions to what a resuming client can still ask for.

A client that dropped may come back within ``SESSION_TTL_S`` and asks for the replies after
the last one it got; those were written after it dropped, or just before. Older replies serve
nobody, so every gateway trims every reply partition by age (``XTRIM MINID``, Redis's own
clock) every ``TRIM_EVERY_S``. ``REPLY_MAXLEN`` stays as a cap on a partition that fills
faster than that (see ``resume.missed`` for telling the two trims apart).
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from shared import topology
from shared.redis_io import TRANSIENT, redis_now_ms

log = structlog.get_logger(__name__)

TRIM_EVERY_S = 10.0

TRIMMED = Counter("xrx_gateway_reply_entries_trimmed_total",
                  "Reply entries trimmed by age from the reply partitions")


async def trim_once(r: Redis, keep_s: float) -> int:
    """Trim every reply partition to the entries of the last ``keep_s`` seconds (by whole
    macro nodes, as ``~`` allows); return how many entries went."""
    min_ms = await redis_now_ms(r) - int(keep_s * 1000)
    async with r.pipeline(transaction=False) as p:
        topology.trim_replies(p, min_ms)
        removed = sum(int(n) for n in await p.execute())
    TRIMMED.inc(removed)
    return removed


async def trim_forever(r: Redis, session_ttl_s: int) -> None:
    keep_s = topology.reply_keep_s(session_ttl_s)
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        try:
            removed = await trim_once(r, keep_s)
            if removed:
                log.debug("reply partitions trimmed", entries=removed, keep_s=keep_s)
        except TRANSIENT as err:
            log.warning("could not trim the reply partitions", error=str(err))
