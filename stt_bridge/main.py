"""``xrx stt-bridge``: the STT stage worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from shared.config import Settings
from shared.keys import Stage
from shared.ownership import Acker, HandlerFactory, SessionHandler
from shared.worker import run_stage_worker
from stt_bridge.session import SttSession
from stt_bridge.stt_client import SttClient


@asynccontextmanager
async def setup(settings: Settings, r: Redis) -> AsyncIterator[HandlerFactory]:
    stt = SttClient(settings.stt_url, settings.STT_TIMEOUT_S)

    async def open_session(sid: str, acker: Acker) -> SessionHandler:
        return SttSession(r, stt, sid, acker, settings.AGENT_WAIT_MS)

    try:
        yield open_session
    finally:
        await stt.aclose()


def run() -> None:
    run_stage_worker(Stage.STT_BRIDGE, "stt-bridge", setup)
