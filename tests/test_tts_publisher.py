"""The TTS bridge's chunk publisher on a real Redis: every chunk reaches the reply stream in
order, however fast they come, and a fenced turn stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from shared import keys, topology
from shared.messages import Reply
from tests.conftest import flushed_db
from tests.harness import RedisServer
from tts_bridge.publisher import ChunkPublisher

SID = "publisher"


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, 15) as client:
        yield client


def chunk(n: int) -> Reply:
    return Reply(session_id=SID, turn=3, pcm=bytes([n]) * 320, seq=1, chunk=n)


async def published(r: aioredis.Redis) -> list[Reply]:
    stream = keys.reply_partition(topology.partition_of(SID))
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(stream))
    return [Reply.decode(fields) for _, fields in entries]


async def test_chunks_arriving_faster_than_redis_all_arrive_in_order(
        r: aioredis.Redis) -> None:
    out = ChunkPublisher(r, SID, 3)
    for n in range(1, 9):  # back to back: most join a round trip already under way
        assert out.add(chunk(n))
    done = Reply(session_id=SID, turn=3, user="system", type="action",
                 content="audio_generation_done")
    assert await out.flush(done)
    got = await published(r)
    assert [c.chunk for c in got[:-1]] == list(range(1, 9))
    assert [c.pcm for c in got[:-1]] == [bytes([n]) * 320 for n in range(1, 9)]
    assert got[-1].content == "audio_generation_done"


async def test_a_fenced_turn_stops_the_publisher(r: aioredis.Redis) -> None:
    await r.set(keys.fence(SID), 4)  # a barge-in cut turn 3
    first: list[int] = []
    out = ChunkPublisher(r, SID, 3, on_first_published=lambda: first.append(1))
    assert out.add(chunk(1))  # goes out before anyone knows
    assert not await out.flush()
    assert out.fenced
    assert not out.add(chunk(2))  # known now: stop producing
    assert not first  # a fenced chunk is not "first audio published"
