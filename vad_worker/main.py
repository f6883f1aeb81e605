"""``xrx vad-worker``: the VAD stage worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from shared.config import Settings
from shared.keys import Stage
from shared.ownership import Acker, HandlerFactory, SessionHandler
from shared.worker import run_stage_worker
from vad_worker.batch_vad import BatchVad
from vad_worker.batcher import VadBatcher
from vad_worker.engine import VadEngine
from vad_worker.segmenter import VadParams
from vad_worker.session import VadSession


@asynccontextmanager
async def setup(settings: Settings, r: Redis) -> AsyncIterator[HandlerFactory]:
    model = await asyncio.to_thread(BatchVad, 1)
    batcher = VadBatcher(r, VadEngine(VadParams.from_settings(settings), model),
                         settings.audio_pacing)

    async def open_session(sid: str, acker: Acker) -> SessionHandler:
        return await VadSession.restore(r, sid, acker, batcher,
                                        forward_audio=settings.stt_streaming,
                                        max_lag_ms=settings.VAD_MAX_LAG_MS)

    try:
        yield open_session
    finally:
        await batcher.aclose()


def run() -> None:
    run_stage_worker(Stage.VAD, "vad-worker", setup)
