"""Which replica of a stage holds which partition: heartbeats, leases and rebalancing.

Every replica heartbeats into the stage's member set. From the live members each replica
computes its fair share of the partitions (:func:`share`); a replica above its share releases
partitions (after handing their sessions over cleanly), a replica below it takes free ones.
Heartbeats and renewals run in a thread of their own (:class:`LeaseKeeper`); the holder trusts
a lease locally for less than its TTL, and checks it before every write that others could see
(:func:`check_lease`), so a replica woken from a pause longer than its lease writes nothing.
A lease is a key with a TTL holding ``<replica> <epoch>``; the epoch grows with every grant,
so whatever a former holder does after losing a lease can be told apart. A dead replica's
leases and heartbeat run out after ``LEASE_MS``, and the survivors' shares grow to cover its
partitions: a survivor looks again as the first lease held by another replica is due to run
out, so failover takes at most LEASE_MS after the dead replica's last renewal (at most
LEASE_MS after its death, at least 3/4 of it).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import cast

import structlog
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage

log = structlog.get_logger(__name__)

# Grant a free lease: the epoch counter grows, the holder is named with its epoch.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"""

# Renew every lease this replica holds that is still its own at the same epoch, in one call:
# a command per lease was, with the holders' poll below, a sixth of Redis's commands at 100
# sessions, and grew with partitions x replicas. KEYS are the leases, ARGV[1] the TTL, then
# each lease's token; returns 1 / 0 per lease.
_RENEW_ALL = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# Every partition's holder and the lease's remaining ms (-2: free), in one call.
_HOLDERS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key) or ''
  out[2 * i] = redis.call('PTTL', key)
end
return out
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


class LeaseLost(Exception):
    """This replica no longer holds the partition of the session it is working for: whatever
    it was about to write is stale (another replica has the session now)."""


# The replica's lease on the partition the running code works for: set by the stage worker
# around everything it does for a partition's sessions, inherited by the tasks they start.
CURRENT_LEASE: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "current_lease", default=None)

# A lease is trusted locally for this share of its TTL after the renewal that extended it was
# sent: the holder stops writing before Redis lets the lease go, whatever the clocks' drift.
LOCAL_TRUST = 0.8


class Lease:
    """One held partition lease, renewed by the :class:`LeaseKeeper` thread."""

    def __init__(self, n: int, epoch: int, lease_ms: int, granted_at: float) -> None:
        self.n, self.epoch, self.lease_ms = n, epoch, lease_ms
        self.valid_until = granted_at + lease_ms / 1000 * LOCAL_TRUST
        self.lost = False

    def valid(self) -> bool:
        return not self.lost and time.monotonic() < self.valid_until


def check_lease() -> None:
    """Raise :class:`LeaseLost` if the code running now works for a partition this replica
    no longer holds: called before every write with effects other replicas could see
    (a stale holder woken from a pause must not write over the new holder's work)."""
    lease = CURRENT_LEASE.get()
    if lease is not None and not lease.valid():
        raise LeaseLost(f"partition {lease.n} (epoch {lease.epoch}) is no longer held")


class LeaseKeeper(threading.Thread):
    """Heartbeats and renews this replica's leases from a thread of its own, with its own
    connection: a busy event loop (a long batch, a burst of entries) never delays a renewal
    into a false takeover. A lease it cannot renew is marked lost and reported to the loop."""

    def __init__(self, client: SyncRedis, stage: Stage, replica: str, lease_ms: int,
                 on_lost: Callable[[int], None]) -> None:
        super().__init__(name=f"lease-keeper-{stage.value}", daemon=True)
        self.r, self.stage, self.replica, self.lease_ms = client, stage, replica, lease_ms
        self.members_key = keys.stage_members(stage)
        self.on_lost = on_lost
        self.held: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.alive = False  # the last round reached Redis
        # A thread starts with an empty context: this one logs with its starter's (the
        # process name, bound at start).
        self._context = contextvars.copy_context()

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self.held[lease.n] = lease

    def forget(self, n: int) -> None:
        with self._lock:
            self.held.pop(n, None)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self._context.run(self._renew_until_stopped)

    def _renew_until_stopped(self) -> None:
        period = self.lease_ms / 4000
        failing = False
        while not self._stop.is_set():
            try:
                self.renew_once()
                if failing:
                    log.info("lease renewal back", stage=self.stage.value)
                self.alive, failing = True, False
            except Exception as err:  # Redis away: leases run out locally too
                if not failing:  # once per outage, not every period
                    log.warning("lease renewal failed", stage=self.stage.value, error=str(err))
                self.alive, failing = False, True
            self._stop.wait(period)

    def renew_once(self) -> None:
        with self._lock:
            held = list(self.held.values())
        sent = time.monotonic()
        now_ms = int(time.time() * 1000)
        p = self.r.pipeline(transaction=False)
        p.zadd(self.members_key, {self.replica: now_ms})
        # Names of replicas long gone (each restart may bring a new one) are forgotten.
        p.zremrangebyscore(self.members_key, 0, now_ms - 10 * self.lease_ms)
        if held:
            p.eval(_RENEW_ALL, len(held),
                   *[keys.partition_lease(self.stage, lease.n) for lease in held],
                   self.lease_ms, *[f"{self.replica} {lease.epoch}" for lease in held])
        results = p.execute()[2:]
        renewed = cast(list[int], results[0]) if held else []
        for lease, ok in zip(held, renewed, strict=True):
            if ok:
                lease.valid_until = sent + self.lease_ms / 1000 * LOCAL_TRUST
            elif not lease.lost:
                lease.lost = True
                self.on_lost(lease.n)


class Leases:
    """One replica's view of its stage's membership and partition leases."""

    def __init__(self, r: Redis, stage: Stage, replica: str, partitions: int,
                 lease_ms: int) -> None:
        self.r, self.stage, self.replica = r, stage, replica
        self.partitions, self.lease_ms = partitions, lease_ms
        self.members_key = keys.stage_members(stage)
        self.soonest_expiry_s: float | None = None  # see holders()

    def _token(self, epoch: int) -> str:
        return f"{self.replica} {epoch}"

    async def members(self) -> list[str]:
        """The live members (heartbeat within a lease), this replica included."""
        now = int(time.time() * 1000)
        raw = cast(list[bytes], await self.r.zrangebyscore(self.members_key,
                                                            now - self.lease_ms, "+inf"))
        return [m.decode() for m in raw]

    async def leave(self) -> None:
        await self.r.zrem(self.members_key, self.replica)

    async def holders(self) -> list[str | None]:
        """The replica holding each partition, None where the lease is free. Also notes in
        ``soonest_expiry_s`` how soon the first lease held by another replica runs out if it
        is not renewed (a live holder renews long before): a replica that died is noticed
        when its lease expires, not up to a balancing period later."""
        names = [keys.partition_lease(self.stage, n) for n in range(self.partitions)]
        raw = cast(list[bytes | int], await self.r.eval(_HOLDERS, len(names), *names))
        holders = [cast(bytes, v).decode().rsplit(" ", 1)[0] or None for v in raw[0::2]]
        ttls = cast(list[int], raw[1::2])
        others = [ttl for holder, ttl in zip(holders, ttls, strict=True)
                  if holder not in (None, self.replica) and ttl >= 0]
        self.soonest_expiry_s = min(others) / 1000 if others else None
        return holders

    async def acquire(self, n: int) -> int:
        """The lease's epoch if it was free and is now ours, else 0."""
        return int(await self.r.eval(_ACQUIRE, 2, keys.partition_lease(self.stage, n),
                                     keys.partition_epoch(self.stage, n), self.replica,
                                     self.lease_ms))

    async def release(self, n: int, epoch: int) -> None:
        await self.r.eval(_RELEASE, 1, keys.partition_lease(self.stage, n), self._token(epoch))
