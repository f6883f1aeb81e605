"""Reply partitions are kept to what a resume can ask for: trimmed by age on Redis's clock,
and a resume is told replies were lost only when the count cap, not the age trim, cut into
what it asks for. Against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from gateway import reply_trim, resume
from shared import keys, topology
from shared.messages import MsgType, Reply, User
from shared.redis_io import redis_now_ms
from tests.conftest import flushed_db
from tests.harness import RedisServer

SID = "0" * 32
KEEP_S = 90


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, 13) as client:
        yield client


def stream() -> str:
    return keys.reply_partition(topology.partition_of(SID))


async def add(r: aioredis.Redis, ms: int, n: int, text: str) -> list[bytes]:
    fields = Reply(session_id=SID, user=User.AGENT, content=text, type=MsgType.TEXT).encode()
    async with r.pipeline(transaction=False) as p:
        for i in range(n):
            p.xadd(stream(), fields, id=f"{ms}-{i}")
        return list(await p.execute())


async def test_age_trim_drops_old_replies_and_keeps_the_resume_window(r: aioredis.Redis) -> None:
    now = await redis_now_ms(r)
    await add(r, now - 400_000, 350, "old")  # several whole macro nodes (100 entries each)
    recent = await add(r, now - 5_000, 20, "recent")
    removed = await reply_trim.trim_once(r, KEEP_S)
    left = cast(list[tuple[bytes, Any]], await r.xrange(stream()))
    assert removed >= 300
    assert [i for i, _ in left][-20:] == recent  # every reply inside the window stays
    assert len(left) < 20 + 100  # at most the macro node the window starts in


async def test_resume_after_an_age_trim_is_not_told_replies_were_lost(r: aioredis.Redis) -> None:
    now = await redis_now_ms(r)
    # A quiet client: its last reply is older than anything the age trim left.
    (last,) = await add(r, now - 600_000, 1, "long ago")
    await r.xtrim(stream(), minid=f"{now - 300_000}-0", approximate=False)
    missed_ids = await add(r, now - 2_000, 3, "while away")
    entries, trimmed = await resume.missed(r, SID, last, b"+", KEEP_S)
    assert [i for i, _ in entries] == missed_ids
    assert not trimmed


async def test_resume_after_the_count_cap_cut_in_is_told(r: aioredis.Redis) -> None:
    now = await redis_now_ms(r)
    (last,) = await add(r, now - 20_000, 1, "before the drop")
    await add(r, now - 10_000, 5, "lost to the cap")
    kept = await add(r, now - 1_000, topology.REPLY_MAXLEN, "kept")
    await r.xtrim(stream(), maxlen=topology.REPLY_MAXLEN, approximate=False)
    entries, trimmed = await resume.missed(r, SID, last, b"+", KEEP_S)
    assert [i for i, _ in entries] == kept
    assert trimmed
