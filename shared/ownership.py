"""Session ownership for a stage: one replica owns a session, with failover.

Opening a session puts one claim on the stage's ownership queue (a stream with a consumer
group). The replica whose XREADGROUP receives the claim owns the session while the claim stays
pending under its name; it keeps the claim's idle time low by re-claiming it every third of a
lease. It reads the session's own input stream with XREADGROUP in the same blocking call as the
ownership queue, so one call serves every session a replica owns, and entries of one session
are handled in order by one replica. A dead owner's claims grow idle; after ``LEASE_MS`` a live
replica takes them with XAUTOCLAIM, takes the session's unacknowledged inputs too, and resumes.
Bounds: failover takes at most LEASE_MS plus one maintenance period (LEASE_MS / 3); inputs not
yet acknowledged by the dead owner are handled again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from prometheus_client import Gauge
from redis import exceptions as rexc
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import OwnershipClaim
from shared.redis_io import (
    TRANSIENT,
    Backoff,
    Fields,
    ensure_group,
    expire_session,
    read_group,
)

log = structlog.get_logger(__name__)

OWNED_SESSIONS = Gauge("xrx_owned_sessions", "Sessions this replica owns", ["stage"])

# Refresh only the claims still pending under this consumer: a claim another replica took
# over must not be stolen back by a slow former owner.
_REFRESH = """
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""

class SessionHandler(Protocol):
    """A stage's per-session logic. ``handle`` is called in stream order and must return
    quickly (long work goes to a task); it returns True when the session is over."""

    async def handle(self, entry_id: bytes, fields: Fields) -> bool: ...

    async def close(self, *, handing_over: bool) -> None: ...


class Acker:
    """Acknowledges a session's input entries once their effects are published.

    A session's input stream has exactly one reader (its stage's group), so an acknowledged
    entry is garbage: it is deleted with the acknowledgement, which bounds the stream to the
    work in flight (utterance audio would otherwise pile up for the session's lifetime).
    """

    def __init__(self, r: Redis, stream: str, group: str) -> None:
        self._r, self._stream, self._group = r, stream, group

    async def ack(self, *entry_ids: bytes) -> None:
        if entry_ids:
            await ack_and_delete(self._r, self._stream, self._group, *entry_ids)


async def ack_and_delete(r: Redis, stream: str, group: str, *entry_ids: bytes) -> None:
    async with r.pipeline(transaction=True) as p:
        p.xack(stream, group, *entry_ids)
        p.xdel(stream, *entry_ids)
        await p.execute()


HandlerFactory = Callable[[str, Acker], Awaitable[SessionHandler]]


class StageWorker:
    def __init__(self, r: Redis, stage: Stage, consumer: str, factory: HandlerFactory,
                 *, lease_ms: int = 10_000, block_ms: int = 1000) -> None:
        self.r, self.stage, self.consumer, self.factory = r, stage, consumer, factory
        self.lease_ms, self.block_ms = lease_ms, block_ms
        self.queue = keys.ownership_queue(stage)
        self.group = stage.value
        self.sessions: dict[str, SessionHandler] = {}
        self._claims: dict[str, bytes] = {}  # session id -> claim entry id
        self._by_stream: dict[bytes, str] = {}  # input stream key -> session id
        self._next_maintenance = 0.0
        self.ready = False

    # --- main loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                if not self.ready:
                    await ensure_group(self.r, self.queue, self.group)
                    await self._resume_own_claims()
                    self.ready = True
                await self._maintain_if_due()
                await self._read_once()
                backoff.reset()
            except TRANSIENT as err:
                self.ready = False
                log.warning("redis unavailable, retrying", stage=self.stage.value, error=str(err))
                await backoff.sleep()
            except rexc.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                # Redis lost our groups (restart without persistence): recreate them.
                log.warning("consumer group missing, recreating", stage=self.stage.value)
                self.ready = False
                await self._recreate_groups()
        await self.shutdown()

    async def _read_once(self) -> None:
        streams: dict[str, str] = {self.queue: ">"}
        for sid in self.sessions:
            streams[keys.stage_input(sid, self.stage)] = ">"
        batch = await read_group(self.r, self.group, self.consumer, streams, count=64,
                                 block_ms=self.block_ms)
        for stream, entries in batch:
            if stream == self.queue.encode():
                for entry_id, fields in entries:
                    await self._open(OwnershipClaim.decode(fields).session_id, entry_id)
            else:
                owned = self._by_stream.get(stream)
                if owned is not None:
                    await self._dispatch(owned, entries)

    async def _dispatch(self, sid: str, entries: list[tuple[bytes, Fields]]) -> None:
        handler = self.sessions.get(sid)
        if handler is None:
            return
        for entry_id, fields in entries:
            if await handler.handle(entry_id, fields):
                await self._close(sid)
                return

    # --- ownership -----------------------------------------------------------------------

    async def _open(self, sid: str, claim_id: bytes) -> None:
        if sid in self.sessions:
            self._claims[sid] = claim_id
            return
        if not await self.r.exists(keys.session_record(sid)):
            # The session ended (or its gateway vanished) before anyone took it.
            await self._release_claim(claim_id)
            return
        stream = keys.stage_input(sid, self.stage)
        await ensure_group(self.r, stream, self.group)
        handler = await self.factory(sid, Acker(self.r, stream, self.group))
        self.sessions[sid] = handler
        self._claims[sid] = claim_id
        self._by_stream[stream.encode()] = sid
        OWNED_SESSIONS.labels(self.stage.value).set(len(self.sessions))
        log.info("session owned", stage=self.stage.value, session_id=sid)
        # Inputs a former owner read but never acknowledged are handled again, in order.
        _, pending, _ = await self.r.xautoclaim(stream, self.group, self.consumer, 0, "0-0",
                                                count=1000)
        if pending:
            await self._dispatch(sid, [(i, f) for i, f in pending if f is not None])

    async def _close(self, sid: str, *, handing_over: bool = False) -> None:
        handler = self.sessions.pop(sid, None)
        claim_id = self._claims.pop(sid, None)
        self._by_stream.pop(keys.stage_input(sid, self.stage).encode(), None)
        OWNED_SESSIONS.labels(self.stage.value).set(len(self.sessions))
        if handler is not None:
            await handler.close(handing_over=handing_over)
        if claim_id is not None:
            await self._release_claim(claim_id)
            if handing_over:
                await offer_session(self.r, self.stage, sid)
        log.info("session released", stage=self.stage.value, session_id=sid,
                 handing_over=handing_over)

    async def _release_claim(self, claim_id: bytes) -> None:
        await self.r.xack(self.queue, self.group, claim_id)
        await self.r.xdel(self.queue, claim_id)

    async def _resume_own_claims(self) -> None:
        """After a restart under the same name, take back what is still pending for us."""
        batch = await read_group(self.r, self.group, self.consumer, {self.queue: "0"}, count=1000)
        for _, entries in batch:
            for entry_id, fields in entries:
                if fields:
                    await self._open(OwnershipClaim.decode(fields).session_id, entry_id)

    async def _maintain_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.lease_ms / 3000
        await self._refresh_claims()
        await self._take_over_orphans()

    async def _refresh_claims(self) -> None:
        if not self._claims:
            return
        sids = list(self._claims)
        kept = await self.r.eval(_REFRESH, 1, self.queue, self.group, self.consumer,
                                 *(self._claims[s] for s in sids))
        kept_ids = set(kept)
        for sid in sids:
            if self._claims.get(sid) not in kept_ids:
                log.warning("session taken over by another replica", stage=self.stage.value,
                            session_id=sid)
                handler = self.sessions.pop(sid, None)
                self._claims.pop(sid, None)
                self._by_stream.pop(keys.stage_input(sid, self.stage).encode(), None)
                if handler is not None:
                    await handler.close(handing_over=True)
            elif not await self.r.exists(keys.session_record(sid)):
                # Its gateway vanished without closing it: reap the session and its keys.
                log.info("session record expired, closing", stage=self.stage.value,
                         session_id=sid)
                await self._close(sid)
                async with self.r.pipeline(transaction=False) as p:
                    expire_session(p, sid)
                    await p.execute()

    async def _take_over_orphans(self) -> None:
        _, claimed, _ = await self.r.xautoclaim(self.queue, self.group, self.consumer,
                                                self.lease_ms, "0-0", count=100)
        for entry_id, fields in claimed:
            if fields:
                sid = OwnershipClaim.decode(fields).session_id
                log.warning("taking over orphaned session", stage=self.stage.value,
                            session_id=sid)
                await self._open(sid, entry_id)

    async def _recreate_groups(self) -> None:
        try:
            await ensure_group(self.r, self.queue, self.group)
            for sid in self.sessions:
                await ensure_group(self.r, keys.stage_input(sid, self.stage), self.group)
        except TRANSIENT:
            await asyncio.sleep(0.5)

    async def shutdown(self) -> None:
        """Hand every owned session to another replica right away instead of after a lease."""
        log.info("shutting down: handing sessions over", stage=self.stage.value,
                 sessions=len(self.sessions))
        for sid in list(self.sessions):
            try:
                await self._close(sid, handing_over=True)
            except TRANSIENT as err:
                log.warning("could not hand over session", session_id=sid, error=str(err))


async def offer_session(r: Redis, stage: Stage, sid: str) -> None:
    await r.xadd(keys.ownership_queue(stage), OwnershipClaim(session_id=sid).encode())
