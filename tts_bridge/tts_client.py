"""Client of the xRx TTS service: text in, PCM chunks out until ``{"action":"done"}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from shared.protocols import TTS_ACTION, TtsAction, tts_command
from shared.ws_pool import ServiceUnavailable, WsPool


class TtsClient:
    def __init__(self, url: str, chunk_timeout_s: float = 15.0) -> None:
        self.pool = WsPool(url)
        self.chunk_timeout_s = chunk_timeout_s

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Audio chunks of ``text``. Stopping early discards the connection, which is how a
        synthesis is cancelled: the service stops when its client goes away."""
        async with self.pool.connection() as ws:
            await ws.send(tts_command(TtsAction.SYNTHESIZE, text))
            while True:
                try:
                    frame = await asyncio.wait_for(ws.recv(), self.chunk_timeout_s)
                except TimeoutError:
                    raise ServiceUnavailable("speech synthesis stalled") from None
                if isinstance(frame, bytes):
                    yield frame
                    continue
                try:
                    if json.loads(frame).get(TTS_ACTION) == TtsAction.DONE:
                        return
                except (json.JSONDecodeError, AttributeError):
                    continue

    async def aclose(self) -> None:
        await self.pool.aclose()
