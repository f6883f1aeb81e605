"""Which replica of a stage holds which partition: heartbeats, leases and rebalancing.

Every replica heartbeats into the stage's member set. From the live members each replica
computes its fair share of the partitions (:func:`share`); a replica above its share releases
partitions (after handing their sessions over cleanly), a replica below it takes free ones.
A lease is a key with a TTL holding ``<replica> <epoch>``; the epoch grows with every grant,
so whatever a former holder does after losing a lease can be told apart. A dead replica's
leases and heartbeat run out after ``LEASE_MS``, and the survivors' shares grow to cover its
partitions: failover takes at most LEASE_MS plus one heartbeat period.
"""

from __future__ import annotations

import time
from typing import cast

from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage

# Grant a free lease: the epoch counter grows, the holder is named with its epoch.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"""

# Renew or release only a lease that is still ours at the same epoch.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def share(members: list[str], me: str, partitions: int) -> int:
    """How many partitions ``me`` should hold: an even split, the first replicas in name order
    taking one more when it does not divide."""
    live = sorted(set(members) | {me})
    base, extra = divmod(partitions, len(live))
    return base + (1 if live.index(me) < extra else 0)


def plan(owned: set[int], free: set[int], target: int) -> tuple[list[int], list[int]]:
    """(partitions to release, partitions to take) to move from ``owned`` towards ``target``.

    Releases the highest-numbered first and takes the lowest-numbered free ones: replicas
    applying the same rule converge without talking to each other.
    """
    if len(owned) > target:
        return sorted(owned, reverse=True)[: len(owned) - target], []
    return [], sorted(free - owned)[: target - len(owned)]


class Leases:
    """One replica's view of its stage's membership and partition leases."""

    def __init__(self, r: Redis, stage: Stage, replica: str, partitions: int,
                 lease_ms: int) -> None:
        self.r, self.stage, self.replica = r, stage, replica
        self.partitions, self.lease_ms = partitions, lease_ms
        self.members_key = keys.stage_members(stage)

    def _token(self, epoch: int) -> str:
        return f"{self.replica} {epoch}"

    async def heartbeat(self) -> list[str]:
        """Record that this replica is alive; return the live members (this one included)."""
        now = int(time.time() * 1000)
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(self.members_key, {self.replica: now})
            p.zremrangebyscore(self.members_key, 0, now - self.lease_ms)
            p.zrange(self.members_key, 0, -1)
            *_, members = await p.execute()
        return [m.decode() for m in members]

    async def leave(self) -> None:
        await self.r.zrem(self.members_key, self.replica)

    async def holders(self) -> list[str | None]:
        """The replica holding each partition, None where the lease is free."""
        raw = cast(list[bytes | None],
                   await self.r.mget([keys.partition_lease(self.stage, n)
                                      for n in range(self.partitions)]))
        return [v.decode().rsplit(" ", 1)[0] if v else None for v in raw]

    async def acquire(self, n: int) -> int:
        """The lease's epoch if it was free and is now ours, else 0."""
        return int(await self.r.eval(_ACQUIRE, 2, keys.partition_lease(self.stage, n),
                                     keys.partition_epoch(self.stage, n), self.replica,
                                     self.lease_ms))

    async def renew(self, held: dict[int, int]) -> list[int]:
        """Extend the leases in ``held`` (partition -> epoch); return the ones lost."""
        if not held:
            return []
        order = list(held)
        async with self.r.pipeline(transaction=False) as p:
            for n in order:
                p.eval(_RENEW, 1, keys.partition_lease(self.stage, n), self._token(held[n]),
                       self.lease_ms)
            kept = await p.execute()
        return [n for n, ok in zip(order, kept, strict=True) if not ok]

    async def release(self, n: int, epoch: int) -> None:
        await self.r.eval(_RELEASE, 1, keys.partition_lease(self.stage, n), self._token(epoch))
