"""One model call for every session with audio waiting: cross-session batching, and one Redis
round trip for everything the batch publishes. A wide batch runs in two lanes, the sessions
whose voice may end or barge in now first (see :func:`lanes`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared.ownership import Reads
from shared.pacing import Pacing
from shared.redis_io import TRANSIENT
from vad_worker.engine import VadEngine
from vad_worker.events import VadEvent
from vad_worker.session import VadSession
from vad_worker.state import SessionVadState

log = structlog.get_logger(__name__)

BATCH_SESSIONS = Histogram("xrx_vad_batch_sessions", "Sessions per VAD batch",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
# Redis answers a blocked read of many streams with the first one written to: of a gateway
# write (one pipeline, an entry per partition), the read that wakes this worker brings one
# partition, the next read the rest. A batch begun at once would leave most sessions of the
# write for the next batch, an interval later; so a batch starts once the read after the
# last one that brought audio is in (shared/ownership.py Reads), or after this long.
GATHER_MAX_S = 0.02
# A batch may start this share of the gateway's interval after the last one: a little under
# it, so batches follow the writes at once instead of drifting behind them.
CADENCE = 0.75
BATCH_SECONDS = Histogram("xrx_vad_batch_seconds", "Time of one VAD batch (model included)")
# From this many sessions a batch runs in two lanes (see lanes): a model call costs about a
# millisecond however narrow, against tens of milliseconds for a few hundred sessions.
SPLIT_FROM_SESSIONS = 200
SPLIT_BATCHES = Counter("xrx_vad_split_batches_total",
                        "Batches run in two lanes (sessions whose voice may end first)")

W = TypeVar("W")
# A session in a batch: its handler, the entries it covers, their audio.
Work = tuple[VadSession, list[bytes], bytes]


class VadBatcher:
    """While one batch runs in the inference thread, audio for the next one accumulates,
    so batches widen by themselves as load grows."""

    def __init__(self, r: Redis, engine: VadEngine, pacing: Pacing) -> None:
        self.r, self.engine, self.pacing = r, engine, pacing
        self._sessions = 0  # in the last batch
        self._ready: dict[str, VadSession] = {}
        self._wake = asyncio.Event()
        self._reads: Reads | None = None  # the worker's, known from the first session
        self._last_read = 0  # the newest read that brought audio
        # The sessions of the batch being processed, and its end: a session handed over
        # waits for the batch it is in (and only that one) before its state is saved.
        self._current: set[str] = set()
        self._batch_done = asyncio.Event()
        # One thread: the model is not shared between concurrent calls, and inference never
        # runs on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad-infer",
                                        initializer=engine.model.bind_thread)
        self._task = asyncio.create_task(self._run())

    def submit(self, session: VadSession) -> None:
        self._ready[session.sid] = session
        self._reads = session.acker.reads
        self._last_read = self._reads.follow_up()
        self._wake.set()

    async def settled(self, session: VadSession) -> None:
        """Return once no batch is working on ``session`` (set ``session.closed`` first, so
        no later batch takes it up)."""
        while session.sid in self._current:
            await self._batch_done.wait()

    async def aclose(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            started = loop.time()
            await self._gather()
            self._wake.clear()
            try:
                await self._one_batch()
            finally:
                self._current.clear()
                self._batch_done.set()
                self._batch_done = asyncio.Event()
            # Batches are paced as the gateway writes audio: by then every session has sent
            # its next entry, so one model call covers them all (a batch of 64 serves 7.5
            # times as many streams per core as batches of one).
            interval = CADENCE * self.pacing.interval_s(self._sessions)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def _gather(self) -> None:
        """Until the rest of the write that woke this batch is in too."""
        if self._reads is None:
            return
        deadline = asyncio.get_running_loop().time() + GATHER_MAX_S
        while True:
            last = self._last_read
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._reads.finished_after(last), left)
            except TimeoutError:
                return
            if self._last_read == last:
                return  # the read after the last one with audio brought none: all is in

    async def _one_batch(self) -> None:
        batch, self._ready = list(self._ready.values()), {}
        work = [(s, *s.take_pending()) for s in batch if not (s.closed or s.leaving)]
        self._current = {s.sid for s, _, _ in work}
        sessions = sum(1 for _, _, pcm in work if pcm)
        if not sessions:
            return
        self._sessions = sessions
        BATCH_SESSIONS.observe(sessions)
        with BATCH_SECONDS.time():
            split = lanes(work, lambda item: item[0].state)
            if len(split) > 1:
                SPLIT_BATCHES.inc()
            for lane in split:
                await self._run_lane(lane)

    async def _run_lane(self, work: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        frames = [(s.state, pcm) for s, _, pcm in work if pcm]
        events: list[VadEvent] = []
        if frames:
            try:
                events = await loop.run_in_executor(self._pool, self.engine.process, frames)
            except Exception:
                log.exception("vad inference failed; batch skipped")
                return
        by_session: dict[str, list[VadEvent]] = {}
        for event in events:
            by_session.setdefault(event.session_id, []).append(event)
        acks: list[tuple[VadSession, list[bytes]]] = []
        try:
            async with self.r.pipeline(transaction=False) as p:
                for session, ids, pcm in work:
                    found = by_session.get(session.sid, [])
                    acks.append((session, session.publish(p, found, ids, pcm)))
                await p.execute()
        except TRANSIENT as err:
            # Unacknowledged, the audio is handled again by whoever holds the session
            # next; this replica's state is ahead of Redis, so it lets go of nothing.
            log.warning("redis unavailable, vad results not published", error=str(err))
            return
        for session, ids in acks:
            session.acker.ack(*ids)


def may_end_now(state: SessionVadState) -> bool:
    """Whether a batch may end the session's utterance or start its barge-in: its voice has
    paused (the silence that ends it is under way), or has not yet lasted long enough to
    barge in. Only these events wait on the way to a reply."""
    return state.triggered and (state.silence_start >= 0 or not state.speech_started)


def lanes(work: list[W], state_of: Callable[[W], SessionVadState]) -> list[list[W]]:
    """A wide batch in two model calls, the sessions whose events someone waits for first:
    their results are published while the rest are still in the model. One call per batch
    costs least, so a narrow batch, or one with no such session, stays whole."""
    if len(work) < SPLIT_FROM_SESSIONS:
        return [work]
    first: list[W] = []
    rest: list[W] = []
    for w in work:
        (first if may_end_now(state_of(w)) else rest).append(w)
    return [first, rest] if first and rest else [work]
