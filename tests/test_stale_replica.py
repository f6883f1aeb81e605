"""A replica woken from a pause longer than its lease (SIGSTOP, a VM freeze) leaves the work of
the replica that ran its sessions meanwhile alone: it reads no more from the partitions it
lost (reading would take entries from the new holder, acknowledging them delete them) and the
VAD hands a session over without writing its stale checkpoint. Against a real redis-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from shared import keys, topology
from shared.keys import Stage
from shared.leases import Lease
from shared.messages import AgentInput
from shared.ownership import Partition, StageWorker
from tests.conftest import flushed_db
from tests.harness import RedisServer
from vad_worker.segmenter import VadParams
from vad_worker.session import OFFSET_FIELD, VadSession
from vad_worker.state import SessionVadState


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, 12) as client:
        yield client


class Acks:
    def __init__(self, lease: Lease) -> None:
        self.lease, self.acked = lease, []  # type: tuple[Lease, list[bytes]]

    def ack(self, *ids: bytes) -> None:
        self.acked += ids


async def _settled(_session: Any) -> None:
    return None


def _session(r: aioredis.Redis, lease: Lease) -> tuple[VadSession, Acks]:
    acks = Acks(lease)
    batcher = SimpleNamespace(engine=SimpleNamespace(params=VadParams()), settled=_settled)
    state = SessionVadState("s", pos=16000, triggered=True, buf_start=8000,
                            buffer=bytearray(b"\x01\x00" * 8000))
    session = VadSession(r, "s", cast(Any, acks), state, cast(Any, batcher), offset=b"5-0")
    session.uncheckpointed = [b"6-0", b"7-0"]
    return session, acks


async def test_a_hand_over_under_a_valid_lease_checkpoints_and_acknowledges(
        r: aioredis.Redis) -> None:
    session, acks = _session(r, Lease(0, 1, 2000, time.monotonic()))
    await session.close(handing_over=True)
    saved = await r.hget(keys.checkpoint("s", Stage.VAD), OFFSET_FIELD)
    assert saved == b"5-0"
    assert acks.acked == [b"6-0", b"7-0"]


async def test_a_replica_whose_lease_ran_out_leaves_the_newer_checkpoint(
        r: aioredis.Redis) -> None:
    # Another replica ran the session while this one was paused, and checkpointed further.
    await r.hset(keys.checkpoint("s", Stage.VAD), mapping={OFFSET_FIELD: "90-0"})
    paused = time.monotonic() - 10  # its last renewal, before the pause
    session, acks = _session(r, Lease(0, 1, 2000, paused))
    await session.close(handing_over=True)
    assert await r.hget(keys.checkpoint("s", Stage.VAD), OFFSET_FIELD) == b"90-0"
    assert acks.acked == []  # the new holder handles those entries


async def test_a_replica_whose_lease_ran_out_reads_nothing_more_from_the_partition(
        r: aioredis.Redis, redis_server: RedisServer) -> None:
    handled: list[bytes] = []

    class Recorder:
        async def handle(self, entry_id: bytes, fields: Any) -> bool:
            handled.append(entry_id)
            return False

        async def close(self, *, handing_over: bool) -> None:
            pass

    async def factory(_sid: str, _acker: Any) -> Any:
        return Recorder()

    keeper = SyncRedis(port=redis_server.port, db=12)
    worker = StageWorker(r, keeper, Stage.AGENT_BRIDGE, "woken", factory)
    sid = "a" * 32
    await r.hset(keys.session_record(sid), keys.RECORD_STATUS, "open")
    n = topology.partition_of(sid)
    lease = Lease(n, 1, 2000, time.monotonic() - 10)  # renewed last before a long pause
    part = Partition(Stage.AGENT_BRIDGE, lease)
    await r.xgroup_create(part.stream, Stage.AGENT_BRIDGE.value, id="0", mkstream=True)
    worker.held[n], worker._by_stream[part.stream.encode()] = part, part
    await topology.send(r, Stage.AGENT_BRIDGE, AgentInput(session_id=sid, content="hi"))
    await worker._read_once()
    assert handled == []
    # Left for the partition's new holder: not delivered to this replica, not pending on it.
    pending = await r.xpending(part.stream, Stage.AGENT_BRIDGE.value)
    assert pending["pending"] == 0
    lease.valid_until = time.monotonic() + 1  # renewed after all: it reads on
    await worker._read_once()
    assert len(handled) == 1
    keeper.close()
