"""A stage replica: holds partitions of its stage's input and runs the sessions found in them.

A session is owned by whichever replica holds its partition (shared/leases.py decides which
partitions that is). The replica reads all its partitions with one blocking XREADGROUP, so
the cost of a read does not grow with the sessions it serves, and hands each entry to the
session's handler in stream order, creating the handler when a session first shows up.
Entries are acknowledged (and deleted: a partition has one reader, its stage's group) once
their effects are published; the acknowledgements of one round ride with the next read.

When a partition arrives (a replica joined, left or died), the new holder first claims the
entries the former holder read but never acknowledged and handles them again, in order, then
reads on. Per-session state that must survive the move is the stage's business (the VAD
checkpoints its model state; the others hold only their queue of unacknowledged inputs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import structlog
from prometheus_client import Counter, Gauge
from redis import Redis as SyncRedis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys, topology
from shared.keys import Stage
from shared.leases import CURRENT_LEASE, Lease, LeaseKeeper, Leases, plan, share
from shared.messages import entry_parts
from shared.redis_io import TRANSIENT, Backoff, Fields, ensure_group, id_key
from shared.session_record import expire_session

log = structlog.get_logger(__name__)

OWNED_SESSIONS = Gauge("xrx_owned_sessions", "Sessions this replica owns", ["stage"])
OWNED_PARTITIONS = Gauge("xrx_owned_partitions", "Partitions this replica holds", ["stage"])
PARTITION_MOVES = Counter("xrx_partition_moves_total", "Partitions taken or released",
                          ["stage", "direction"])

# Entries per XREADGROUP: enough to drain a busy round in one call.
READ_COUNT = 2000
# Sessions closed recently per partition, so their stragglers do not reopen them.
RECENTLY_CLOSED = 1000
# How long after a lease is due to expire the balancer looks (Redis deletes expired keys
# on access, so no more is needed than the round trip's jitter).
EXPIRY_SLACK_S = 0.02


class SessionHandler(Protocol):
    """A stage's per-session logic. ``handle`` is called in stream order and must return
    quickly (long work goes to a task); it returns True when the session is over."""

    async def handle(self, entry_id: bytes, fields: Fields) -> bool: ...

    async def close(self, *, handing_over: bool) -> None: ...


class Reads:
    """The replica's partition reads, counted, for a handler that gathers what one client
    write brought before acting on it (the VAD batcher).

    Redis answers a blocked read of many streams with the first one written to; the rest of
    the same write comes with the next read. A handler that asks for it (:meth:`follow_up`,
    while its entry is dispatched) makes that next read one that does not block, and can wait
    for it to be dispatched (:meth:`finished_after`): then it has everything Redis held.
    """

    def __init__(self) -> None:
        self.started = 0  # reads begun; the one whose entries are being dispatched is this
        self.finished = 0  # reads dispatched
        self._follow_up = False
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def follow_up(self) -> int:
        """The next read does not block; returns the number of the read in hand."""
        self._follow_up = True
        return self.started

    def finished_after(self, n: int) -> asyncio.Future[None]:
        """Done once the read after read ``n`` has been dispatched."""
        fut = asyncio.get_running_loop().create_future()
        if self.finished > n:
            fut.set_result(None)
        else:
            self._waiting.append((n + 1, fut))
        return fut

    def begin(self) -> bool:
        """A read starts; returns whether it must not block."""
        self.started += 1
        follow_up, self._follow_up = self._follow_up, False
        return follow_up

    def end(self) -> None:
        self.finished = self.started
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for n, fut in waiting:
                if n > self.finished:
                    self._waiting.append((n, fut))
                elif not fut.done():
                    fut.set_result(None)


class Acker:
    """Acknowledges a session's input entries once their effects are published. They are
    sent with the replica's next read (at most one read's block later). An entry several
    sessions share (an audio batch) is acknowledged once every one of them has."""

    def __init__(self, partition: Partition, sid: str) -> None:
        self._partition, self._sid = partition, sid

    def ack(self, *entry_ids: bytes) -> None:
        self._partition.ack(self._sid, entry_ids)

    @property
    def lease(self) -> Lease:
        return self._partition.lease

    @property
    def reads(self) -> Reads:
        return self._partition.reads


HandlerFactory = Callable[[str, Acker], Awaitable[SessionHandler]]
# What XREADGROUP returns: per stream, its entries (fields None when trimmed while pending).
ReadBatch = list[tuple[bytes, list[tuple[bytes, Fields | None]]]]


class Partition:
    def __init__(self, stage: Stage, lease: Lease, reads: Reads | None = None) -> None:
        self.n, self.epoch, self.lease = lease.n, lease.epoch, lease
        self.reads = reads or Reads()  # the holder's reads, every partition's the same
        self.stream = keys.stage_partition(stage, lease.n)
        self.sessions: dict[str, SessionHandler] = {}
        self.to_ack: list[bytes] = []
        # Shared entries -> the sessions yet to acknowledge them.
        self.shared: dict[bytes, set[str]] = {}
        self.closed: dict[str, None] = {}  # insertion-ordered set
        # The newest entry this replica has dispatched from the partition: any entry pending
        # under its name past this one was delivered by a read whose reply never arrived.
        self.last_read = b"0-0"

    def dispatched(self, entries: list[tuple[bytes, Fields | None]]) -> None:
        if entries and id_key(entries[-1][0]) > id_key(self.last_read):
            self.last_read = entries[-1][0]

    def share(self, entry_id: bytes, sids: list[str]) -> None:
        self.shared[entry_id] = set(sids)

    def ack(self, sid: str, entry_ids: tuple[bytes, ...] | list[bytes]) -> None:
        for entry_id in entry_ids:
            waiting = self.shared.get(entry_id)
            if waiting is None:
                self.to_ack.append(entry_id)
                continue
            waiting.discard(sid)
            if not waiting:
                del self.shared[entry_id]
                self.to_ack.append(entry_id)

    def ack_all(self, sid: str) -> None:
        """A session gone from this partition for good: it acknowledges nothing more."""
        self.ack(sid, [i for i, waiting in self.shared.items() if sid in waiting])

    def forget(self, sid: str) -> None:
        self.closed[sid] = None
        if len(self.closed) > RECENTLY_CLOSED:
            del self.closed[next(iter(self.closed))]


class StageWorker:
    def __init__(self, r: Redis, keeper_client: SyncRedis, stage: Stage, consumer: str,
                 factory: HandlerFactory, *, lease_ms: int = 2000, block_ms: int = 250,
                 reap_every_s: float = 5.0, reader: Redis | None = None) -> None:
        """``reader`` serves the partition reads: a client that does not retry a command
        after a connection error (see ``_read_once``); ``r`` by default."""
        self.r, self.stage, self.consumer, self.factory = r, stage, consumer, factory
        self.reader = reader or r
        # A read failed: what it may have delivered is read again from this replica's own
        # pending entries before anything new.
        self._reread = False
        self.lease_ms, self.block_ms, self.reap_every_s = lease_ms, block_ms, reap_every_s
        self.group = stage.value
        self.read_count = topology.SPECS[stage].read_count
        self.leases = Leases(r, stage, consumer, topology.partitions(), lease_ms)
        self._balance_now = asyncio.Event()
        loop = asyncio.get_running_loop()

        def lost(_n: int) -> None:  # runs in the keeper's thread
            loop.call_soon_threadsafe(self._balance_now.set)

        self.keeper = LeaseKeeper(keeper_client, stage, consumer, lease_ms, lost)
        self.held: dict[int, Partition] = {}
        self._by_stream: dict[bytes, Partition] = {}
        self._moving = asyncio.Lock()
        self._next_reap = 0.0
        self.ready = False
        # Done when the read in flight (if any) has returned.
        self._reading: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reading.set_result(None)
        self._sweeps: set[asyncio.Task[None]] = set()
        self.reads = Reads()

    @property
    def session_count(self) -> int:
        return sum(len(p.sessions) for p in self.held.values())

    # --- main loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.keeper.start()
        balancer = asyncio.create_task(self._balance_forever(stop))
        backoff = Backoff()
        try:
            while not stop.is_set():
                try:
                    await self._read_once()
                    backoff.reset()
                except TRANSIENT as err:
                    log.warning("redis unavailable, retrying", stage=self.stage.value,
                                error=str(err))
                    await backoff.sleep()
                except rexc.ResponseError as err:
                    if "NOGROUP" not in str(err):
                        raise
                    # Redis lost our groups (a restart without persistence): recreate them.
                    log.warning("consumer group missing, recreating", stage=self.stage.value)
                    await self._recreate_groups()
                except Exception:
                    # A worker that dies takes its sessions' lease time with it: log, pause,
                    # go on.
                    log.exception("stage worker loop failed; continuing",
                                  stage=self.stage.value)
                    await backoff.sleep()
        finally:
            balancer.cancel()
            try:
                await balancer
            except asyncio.CancelledError:
                pass
            await self.shutdown()
            self.keeper.stop()

    async def _read_once(self) -> None:
        # Not partitions whose lease has run out locally (a replica woken from a pause longer
        # than the lease, before its keeper notices): reading them would take entries from
        # their new holder, and acknowledging would delete what it has yet to handle. Their
        # acknowledgements wait; the partitions are dropped or the lease renewed shortly.
        parts = [p for p in self.held.values() if p.lease.valid()]
        if not parts:
            await asyncio.sleep(self.block_ms / 1000)
            return
        self._reading = asyncio.get_running_loop().create_future()
        try:
            if self._reread:
                await self._read_delivered_unseen(parts)
            block = None if self.reads.begin() else self.block_ms
            async with self.reader.pipeline(transaction=False) as p:
                acked = self._queue_acks(p, parts)
                p.xreadgroup(self.group, self.consumer, {part.stream: ">" for part in parts},
                             count=self.read_count, block=block)
                try:
                    *_, batch = await p.execute()
                except BaseException:
                    # Redis may have run the read and lost only its reply: the entries it
                    # delivered sit pending under this replica's name, seen by no one. The
                    # reader does not retry, so nothing newer is read before they are.
                    self._reread = True
                    self._requeue_acks(acked)
                    raise
        finally:
            self._reading.set_result(None)
        try:
            await self._dispatch_batch(batch)
        finally:
            self.reads.end()

    async def _read_delivered_unseen(self, parts: list[Partition]) -> None:
        """Dispatch the entries a failed read delivered: this replica's pending entries past
        the last one it dispatched (XREADGROUP with an id reads the reader's own history)."""
        batch = cast(ReadBatch, await self.reader.xreadgroup(
            self.group, self.consumer, {part.stream: part.last_read for part in parts},
            count=READ_COUNT))
        self._reread = False
        found = sum(len(entries) for _, entries in batch or [])
        if found:
            log.warning("entries delivered by a failed read handled now",
                        stage=self.stage.value, entries=found)
        await self._dispatch_batch(batch)

    async def _dispatch_batch(self, batch: ReadBatch | None) -> None:
        for stream, entries in batch or []:
            part = self._by_stream.get(stream)
            if part is not None:
                part.dispatched(entries)
                await self._dispatch(part, entries)

    def _queue_acks(self, p: Pipeline, parts: list[Partition]
                    ) -> list[tuple[Partition, list[bytes]]]:
        acked: list[tuple[Partition, list[bytes]]] = []
        for part in parts:
            if part.to_ack:
                ids, part.to_ack = part.to_ack, []
                p.xack(part.stream, self.group, *ids)
                p.xdel(part.stream, *ids)
                acked.append((part, ids))
        return acked

    @staticmethod
    def _requeue_acks(acked: list[tuple[Partition, list[bytes]]]) -> None:
        for part, ids in acked:
            part.to_ack[:0] = ids

    async def _flush_acks(self, part: Partition) -> None:
        if part.to_ack:
            ids, part.to_ack = part.to_ack, []
            async with self.r.pipeline(transaction=False) as p:
                p.xack(part.stream, self.group, *ids)
                p.xdel(part.stream, *ids)
                await p.execute()

    async def _dispatch(self, part: Partition, entries: list[tuple[bytes, Fields | None]]) -> None:
        # Everything done for these sessions, and every task it starts, works under the
        # partition's lease: a write after the lease is lost raises LeaseLost.
        token = CURRENT_LEASE.set(part.lease)
        try:
            await self._dispatch_entries(part, entries)
        finally:
            CURRENT_LEASE.reset(token)

    async def _dispatch_entries(self, part: Partition,
                                entries: list[tuple[bytes, Fields | None]]) -> None:
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                part.to_ack.append(entry_id)
                continue
            parts = entry_parts(fields)
            if len(parts) > 1:
                part.share(entry_id, [sid for sid, _ in parts])
            elif not parts:
                part.to_ack.append(entry_id)
            for sid, session_fields in parts:
                await self._dispatch_one(part, sid, entry_id, session_fields)

    async def _dispatch_one(self, part: Partition, sid: str, entry_id: bytes,
                            fields: Fields) -> None:
        handler = part.sessions.get(sid)
        if handler is None:
            handler = await self._open(part, sid)
            if handler is None:
                part.ack(sid, [entry_id])
                return
        try:
            over = await handler.handle(entry_id, fields)
        except Exception:
            # One bad entry must not stop the partition's other sessions.
            log.exception("session entry failed", stage=self.stage.value, session_id=sid)
            part.ack(sid, [entry_id])
            return
        if over:
            await self._close(part, sid)

    # --- sessions ------------------------------------------------------------------------

    async def _open(self, part: Partition, sid: str) -> SessionHandler | None:
        if not sid or sid in part.closed:
            return None
        if not await self.r.exists(keys.session_record(sid)):
            # The session ended (or its gateway vanished) before this stage saw it, or Redis
            # lost the record and the gateway has yet to register it again: not remembered
            # as closed, so the session's next entries look again.
            return None
        handler = await self.factory(sid, Acker(part, sid))
        part.sessions[sid] = handler
        self._count()
        return handler

    async def _close(self, part: Partition, sid: str, *, handing_over: bool = False) -> None:
        handler = part.sessions.pop(sid, None)
        if not handing_over:
            part.forget(sid)
            # Its share of batch entries it never finished must not hold them pending.
            part.ack_all(sid)
        self._count()
        if handler is not None:
            token = CURRENT_LEASE.set(part.lease)
            try:
                with structlog.contextvars.bound_contextvars(session_id=sid):
                    await handler.close(handing_over=handing_over)
            finally:
                CURRENT_LEASE.reset(token)

    def _count(self) -> None:
        OWNED_SESSIONS.labels(self.stage.value).set(self.session_count)
        OWNED_PARTITIONS.labels(self.stage.value).set(len(self.held))

    async def _reap_if_due(self) -> None:
        """Close sessions whose record expired (their gateway vanished) and expire their keys:
        those this replica runs, and every other open session of its partitions (one that
        moved here and has been silent since has no handler here, but must not leak)."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + self.reap_every_s
        parts = list(self.held.values())
        if not parts:
            return
        async with self.r.pipeline(transaction=False) as p:
            for part in parts:
                p.smembers(keys.partition_sessions(part.n))
            listed = await p.execute()
        candidates = [(part, sid) for part, members in zip(parts, listed, strict=True)
                      for sid in set(part.sessions) | {m.decode() for m in members}]
        if not candidates:
            return
        async with self.r.pipeline(transaction=False) as p:
            for _, sid in candidates:
                p.exists(keys.session_record(sid))
            alive = await p.execute()
        for (part, sid), ok in zip(candidates, alive, strict=True):
            if ok:
                continue
            if sid in part.sessions:
                log.info("session record expired, closing", stage=self.stage.value,
                         session_id=sid)
                await self._close(part, sid)
            async with self.r.pipeline(transaction=False) as p:
                p.srem(keys.partition_sessions(part.n), sid)
                expire_session(p, sid)
                await p.execute()

    # --- partitions ----------------------------------------------------------------------

    async def _balance_forever(self, stop: asyncio.Event) -> None:
        """Rebalance several times per lease, and again as soon as a lease held by another
        replica is due to run out (its holder may have died: taking its partitions then,
        rather than up to a period later, is a quarter of a lease off every failover)."""
        period = self.lease_ms / 4000
        backoff = Backoff()
        while not stop.is_set():
            try:
                await self.balance()
                await self._reap_if_due()
                self.ready = self.keeper.alive
                backoff.reset()
                self._balance_now.clear()
                wait_s = period
                if (expiry := self.leases.soonest_expiry_s) is not None:
                    wait_s = min(period, expiry + EXPIRY_SLACK_S)
                try:
                    await asyncio.wait_for(self._balance_now.wait(), timeout=wait_s)
                except TimeoutError:
                    pass
            except TRANSIENT as err:
                self.ready = False
                log.warning("redis unavailable, partitions not balanced", stage=self.stage.value,
                            error=str(err))
                await backoff.sleep()
            except Exception:
                log.exception("balancing failed; continuing", stage=self.stage.value)
                await backoff.sleep()

    async def balance(self) -> None:
        async with self._moving:
            lost = [n for n, p in self.held.items() if p.lease.lost]
            if lost:
                log.warning("partition leases lost", stage=self.stage.value, partitions=lost)
                await self._drop(lost, lost=True)
            members = await self.leases.members()
            holders = await self.leases.holders()
            free = {n for n, holder in enumerate(holders) if holder is None}
            target = share(members, self.consumer, self.leases.partitions)
            release, take = plan(set(self.held), free, target)
            await self._drop(release)
            for n in take:
                await self._take(n)
            if self.held:
                await self.r.hset(keys.stage_load(self.stage), mapping={
                    n: f"{self.consumer} {len(p.sessions)}" for n, p in self.held.items()})

    async def _take(self, n: int) -> None:
        asked = time.monotonic()
        epoch = await self.leases.acquire(n)
        if not epoch:
            return  # another replica was quicker
        part = Partition(self.stage, Lease(n, epoch, self.lease_ms, asked), self.reads)
        self.keeper.hold(part.lease)
        await ensure_group(self.r, part.stream, self.group)
        PARTITION_MOVES.labels(self.stage.value, "taken").inc()
        # What the former holder read but never acknowledged is handled again, in order,
        # before anything new.
        start = "0-0"
        reclaimed = 0
        while True:
            nxt, claimed, _ = await self.r.xautoclaim(part.stream, self.group, self.consumer,
                                                      0, start, count=READ_COUNT)
            reclaimed += len(claimed)
            part.dispatched(claimed)
            await self._dispatch(part, claimed)
            start = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
            if start == "0-0" or not claimed:
                break
        self.held[n] = part
        self._by_stream[part.stream.encode()] = part
        self._count()
        sweep = asyncio.create_task(self._sweep_strays(part))
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)
        log.info("partition taken", stage=self.stage.value, partition=n, epoch=epoch,
                 reclaimed=reclaimed)

    async def _sweep_strays(self, part: Partition) -> None:
        """A former holder that lost its lease without knowing yet (paused, cut off) may read
        this partition a little longer, and what it is delivered would stay pending under its
        name. Claimed back and handled here once it has surely stopped: its keeper notices
        within a renewal period, its read returns within a block."""
        for delay in (self.lease_ms / 1000, self.lease_ms / 500):
            await asyncio.sleep(delay)
            # Only as the holder in good standing: a replica that has itself lost the lease
            # without knowing yet must not take entries from the one that has it now.
            if self.held.get(part.n) is not part or not part.lease.valid():
                return
            try:
                # Strays sit untouched; what another replica is working on right now does not.
                pending = cast(list[dict[str, bytes]], await self.r.xpending_range(
                    part.stream, self.group, "-", "+", READ_COUNT,
                    idle=self.lease_ms // 2))
                strays: list[bytes] = [p["message_id"] for p in pending
                                       if p["consumer"].decode() != self.consumer]
                if not strays:
                    continue
                claimed = cast(list[tuple[bytes, Fields | None]], await self.r.xclaim(
                    part.stream, self.group, self.consumer, 0, strays))  # type: ignore[arg-type]
            except (*TRANSIENT, rexc.ResponseError):
                continue  # Redis away, or back empty (NOGROUP: the read loop recreates it)
            log.warning("entries read by a former holder claimed back", stage=self.stage.value,
                        partition=part.n, entries=len(claimed))
            part.dispatched(claimed)
            await self._dispatch(part, claimed)

    async def _drop(self, ns: list[int], *, lost: bool = False) -> None:
        """Let go of partitions: their sessions are handed over (their unfinished work stays
        pending for the next holder), then the leases are released. All at once: the next
        read no longer includes any of them, their sessions close concurrently (one slow
        session, a turn finishing, holds up no other), one wait covers the read in flight."""
        parts = [p for n in ns if (p := self.held.pop(n, None)) is not None]
        if not parts:
            return
        started = time.monotonic()
        for part in parts:
            self._by_stream.pop(part.stream.encode(), None)
        await asyncio.gather(*(self._close(part, sid, handing_over=True)
                               for part in parts for sid in list(part.sessions)))
        closed = time.monotonic()
        for part in parts:
            self.keeper.forget(part.n)
        if not lost:
            # A read already blocked in Redis may still include these partitions: had the
            # leases gone first, an entry arriving now would be delivered here after the next
            # holder reclaimed what was pending, and stay stuck. What that read delivers for
            # them is ignored here and reclaimed by the next holder.
            await asyncio.shield(self._reading)
            for part in parts:
                await self._flush_acks(part)
                await self.leases.release(part.n, part.epoch)
        PARTITION_MOVES.labels(self.stage.value, "released").inc(len(parts))
        self._count()
        log.info("partitions released", stage=self.stage.value,
                 partitions=[p.n for p in parts], lost=lost,
                 closing_ms=round((closed - started) * 1000),
                 total_ms=round((time.monotonic() - started) * 1000))

    async def _recreate_groups(self) -> None:
        try:
            # A copy: the balancer takes and drops partitions while this awaits Redis (each
            # command retries with backoff for up to ~1 s while Redis comes back).
            for part in list(self.held.values()):
                await ensure_group(self.r, part.stream, self.group)
        except TRANSIENT:
            await asyncio.sleep(0.5)

    async def shutdown(self) -> None:
        """Hand every partition to the other replicas right away instead of after a lease."""
        log.info("shutting down: handing partitions over", stage=self.stage.value,
                 partitions=len(self.held), sessions=self.session_count)
        async with self._moving:
            try:
                await self._drop(list(self.held))
            except TRANSIENT as err:
                log.warning("could not hand partitions over", error=str(err))
            try:
                await self.leases.leave()
            except TRANSIENT:
                pass
