"""``xrx tts-bridge``: the TTS stage worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from shared.config import Settings
from shared.keys import Stage
from shared.ownership import Acker, HandlerFactory, SessionHandler
from shared.worker import run_stage_worker
from tts_bridge.session import TtsSession
from tts_bridge.tts_client import TtsClient


@asynccontextmanager
async def setup(settings: Settings, r: Redis) -> AsyncIterator[HandlerFactory]:
    tts = TtsClient(settings.tts_url)

    async def open_session(sid: str, acker: Acker) -> SessionHandler:
        return TtsSession(r, tts, sid, acker, settings.TTS_SAMPLE_RATE)

    try:
        yield open_session
    finally:
        await tts.aclose()


def run() -> None:
    run_stage_worker(Stage.TTS_BRIDGE, "tts-bridge", setup)
