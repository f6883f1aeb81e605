"""A partition read that Redis ran but whose reply never arrived (the connection dropped in
between) delivered its entries to this replica all the same: they must be handled, in order,
before anything newer, not left pending under the replica's name until it restarts. Against
a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from shared import keys, topology
from shared.config import Settings
from shared.keys import Stage
from shared.leases import Lease
from shared.messages import AgentInput
from shared.ownership import Partition, StageWorker
from shared.redis_io import TRANSIENT, connect
from tests.conftest import flushed_db
from tests.harness import RedisServer

DB = 14
SID = "b" * 32


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, DB) as client:
        yield client


async def test_entries_a_failed_read_delivered_are_handled_first(
        r: aioredis.Redis, redis_server: RedisServer) -> None:
    handled: list[str] = []

    class Recorder:
        async def handle(self, entry_id: bytes, fields: Any) -> bool:
            handled.append(AgentInput.decode(fields).content)
            return False

        async def close(self, *, handing_over: bool) -> None:
            pass

    async def factory(_sid: str, _acker: Any) -> Any:
        return Recorder()

    keeper = SyncRedis(port=redis_server.port, db=DB)
    reader = connect(Settings(REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/{DB}"),
                     name="lost-read-test", retries=0)
    worker = StageWorker(r, keeper, Stage.AGENT_BRIDGE, "replica", factory, block_ms=5000,
                         reader=reader)
    stream = topology.input_stream(Stage.AGENT_BRIDGE, SID)
    group = Stage.AGENT_BRIDGE.value
    n = topology.partition_of(SID)
    part = Partition(Stage.AGENT_BRIDGE, Lease(n, 1, 60_000, time.monotonic()))
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    worker.held[n], worker._by_stream[stream.encode()] = part, part
    await r.hset(keys.session_record(SID), keys.RECORD_STATUS, "open")
    try:
        await topology.send(r, Stage.AGENT_BRIDGE, AgentInput(session_id=SID, content="one"))
        await worker._read_once()
        assert handled == ["one"]

        # The replica's next read blocks; Redis serves it "two" and the connection drops
        # before the reply arrives (emulated: "two" is delivered to the replica's name by
        # another connection, then the blocked read's connection is cut).
        blocked = asyncio.create_task(worker._read_once())
        await asyncio.sleep(0.3)
        assert not blocked.done()
        async with r.pipeline(transaction=True) as p:
            topology.send(p, Stage.AGENT_BRIDGE, AgentInput(session_id=SID, content="two"))
            p.xreadgroup(group, "replica", {stream: ">"}, count=10)
            await p.execute()
        await r.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(TRANSIENT):
            await blocked
        # Reading on from ">" would take "three" and leave "two" pending for good.
        await topology.send(r, Stage.AGENT_BRIDGE, AgentInput(session_id=SID, content="three"))

        await worker._read_once()
        assert handled == ["one", "two", "three"]
    finally:
        keeper.close()
        await reader.aclose()
