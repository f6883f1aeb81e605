"""Partition leases on a real Redis: renewal keeps only what is still this replica's, and the
holders' view names every holder and how soon another replica's lease runs out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from shared import keys
from shared.keys import Stage
from shared.leases import Lease, LeaseKeeper, Leases
from tests.conftest import flushed_db
from tests.harness import RedisServer

DB = 12  # function-scoped, flushed per test (shared with tests/test_stale_replica.py)
LEASE_MS = 2000


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, DB) as client:
        yield client


async def test_holders_name_each_partition_and_the_soonest_foreign_expiry(
        r: aioredis.Redis) -> None:
    mine, theirs = Leases(r, Stage.VAD, "me", 4, LEASE_MS), Leases(r, Stage.VAD, "other", 4,
                                                                    LEASE_MS)
    assert await mine.holders() == [None] * 4
    assert mine.soonest_expiry_s is None
    assert await mine.acquire(0) == 1
    assert await theirs.acquire(2) == 1
    assert await mine.acquire(2) == 0  # held
    assert await mine.holders() == ["me", None, "other", None]
    assert mine.soonest_expiry_s is not None
    assert 0 < mine.soonest_expiry_s <= LEASE_MS / 1000


async def test_renewal_extends_own_leases_and_reports_a_lease_taken_over(
        r: aioredis.Redis, redis_server: RedisServer) -> None:
    leases = Leases(r, Stage.STT_BRIDGE, "me", 4, LEASE_MS)
    epochs = {n: await leases.acquire(n) for n in (0, 1, 3)}
    lost: list[int] = []
    keeper = LeaseKeeper(SyncRedis(port=redis_server.port, db=DB), Stage.STT_BRIDGE, "me",
                         LEASE_MS, lost.append)
    now = time.monotonic()
    held = {n: Lease(n, epoch, LEASE_MS, now - 10) for n, epoch in epochs.items()}
    for lease in held.values():
        keeper.hold(lease)
    # Partition 1's lease went to another replica meanwhile (this one paused past its TTL).
    await r.set(keys.partition_lease(Stage.STT_BRIDGE, 1), "other 7", px=LEASE_MS)
    await r.pexpire(keys.partition_lease(Stage.STT_BRIDGE, 0), 100)

    keeper.renew_once()

    assert lost == [1]
    assert held[1].lost and not held[1].valid()
    assert held[0].valid() and held[3].valid()
    assert await r.pttl(keys.partition_lease(Stage.STT_BRIDGE, 0)) > 1000
    assert await r.get(keys.partition_lease(Stage.STT_BRIDGE, 1)) == b"other 7"
    keeper.renew_once()  # a lost lease is reported once
    assert lost == [1]
    keeper.r.close()
