"""Client audio -> the VAD stage, many frames per Redis round trip.

Per-command overhead, in the Redis client and in every stage downstream, bounds how many
frames the system can take: one writer drains every frame waiting across all connections,
joins each session's frames and writes one entry per partition (every session of the
partition in it) in one pipeline, so entries grow and round trips stay few as load grows (the
same idea as the VAD batcher). Frames of one session keep their order: one queue, one writer.

A failed write loses the batch's audio: each session in it is told once per outage
(gateway/outage.py), and told again once a later write succeeds.

Each write also trims the partitions to the last ``keep_ms`` of audio, on Redis's clock (read
in the same round trip, used by the next write): a VAD that falls behind finds its oldest
audio gone instead of Redis growing, and it sheds and reports what comes too late anyway.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis

from gateway.metrics import AUDIO_FRAMES_IN
from gateway.outage import OutageNotices
from shared import topology
from shared.pacing import Pacing
from shared.redis_io import TRANSIENT, time_ms

log = structlog.get_logger(__name__)

MAX_BATCH = 4096
# Frames waiting for Redis before a client's receive loop has to wait (TCP backpressure):
# bounds the gateway's audio backlog (20,000 frames of 30 ms = 19 MB, 10 minutes of one
# session's audio, or 6 s for 100 sessions).
MAX_WAITING = 20_000

BATCH_FRAMES = Histogram("xrx_gateway_audio_batch_frames", "Audio frames per Redis pipeline",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))


class AudioIngest:
    def __init__(self, r: Redis, notices: OutageNotices, keep_ms: int, pacing: Pacing) -> None:
        """``notices`` hears which sessions lost frames, and when writes succeed again;
        ``keep_ms`` is how much audio the VAD partitions keep; ``pacing`` how often to
        write."""
        self.r, self.notices, self.keep_ms, self.pacing = r, notices, keep_ms, pacing
        self._redis_ms: int | None = None  # Redis's clock at the last write
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_WAITING)

    async def put(self, sid: str, pcm: bytes) -> None:
        await self._queue.put((sid, pcm))

    def offer(self, sid: str, pcm: bytes) -> bool:
        """Queue a frame unless the queue is full (then False: :meth:`put` waits for room)."""
        try:
            self._queue.put_nowait((sid, pcm))
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            started = loop.time()
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            BATCH_FRAMES.observe(len(batch))
            AUDIO_FRAMES_IN.inc(len(batch))
            by_session: dict[str, list[bytes]] = {}
            for sid, pcm in batch:
                by_session.setdefault(sid, []).append(pcm)
            try:
                try:
                    await self._write(by_session)
                except TRANSIENT:
                    # Once more at once: a pooled connection that went stale while Redis
                    # restarted fails on first use, and that is no reason to lose audio (or
                    # to tell the client so). A real outage fails again.
                    await self._write(by_session)
            except TRANSIENT as err:
                log.warning("redis unavailable, audio frames lost", frames=len(batch),
                            error=str(err))
                for sid in by_session:
                    self.notices.audio_lost(sid)
            else:
                self.notices.ended()
            # At most one round trip per interval: under load each one carries one entry
            # per session joining several frames, which divides what every step downstream
            # pays per entry; the interval grows with the sessions (shared/pacing.py).
            interval = self.pacing.interval_s(len(by_session))
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def _write(self, by_session: dict[str, list[bytes]]) -> None:
        keep_after = None if self._redis_ms is None else self._redis_ms - self.keep_ms
        async with self.r.pipeline(transaction=False) as p:
            topology.send_audio(p, {sid: b"".join(frames) for sid, frames in by_session.items()},
                                keep_after)
            p.time()
            *_, now = await p.execute()
        self._redis_ms = time_ms(now)
