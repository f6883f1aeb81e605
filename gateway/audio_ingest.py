"""Client audio -> the sessions' VAD streams, many frames per Redis round trip.

Per-command overhead in the Redis client, not Redis, bounds how many frames a gateway can
take: one writer drains every frame waiting across all connections and sends them in one
pipeline, so the batch widens by itself as load grows (the same idea as the VAD batcher).
Frames of one session keep their order: one queue, one writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import AudioIn
from shared.redis_io import TRANSIENT

log = structlog.get_logger(__name__)

AUDIO_MAXLEN = 2000
MAX_BATCH = 512
# Frames waiting for Redis before a client's receive loop has to wait (TCP backpressure).
MAX_WAITING = 20_000

BATCH_FRAMES = Histogram("xrx_gateway_audio_batch_frames", "Audio frames per Redis pipeline",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))

OnLost = Callable[[str], Awaitable[None]]


class AudioIngest:
    def __init__(self, r: Redis, on_lost: OnLost) -> None:
        """``on_lost(sid)`` is told when a session's frames could not be written."""
        self.r, self.on_lost = r, on_lost
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_WAITING)

    async def put(self, sid: str, pcm: bytes) -> None:
        await self._queue.put((sid, pcm))

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            BATCH_FRAMES.observe(len(batch))
            try:
                async with self.r.pipeline(transaction=False) as p:
                    for sid, pcm in batch:
                        p.xadd(keys.stage_input(sid, Stage.VAD), AudioIn(pcm=pcm).encode(),
                               maxlen=AUDIO_MAXLEN, approximate=True)
                    await p.execute()
            except TRANSIENT as err:
                log.warning("redis unavailable, audio frames lost", frames=len(batch),
                            error=str(err))
                for sid in dict.fromkeys(s for s, _ in batch):
                    await self.on_lost(sid)
