"""Client of the xRx TTS service: text in, PCM chunks out until ``{"action":"done"}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing

import structlog

from shared.protocols import TTS_ACTION, TtsAction, tts_command
from shared.ws_pool import ConnectionLost, ServiceUnavailable, WsPool

log = structlog.get_logger(__name__)


class TtsClient:
    def __init__(self, url: str, chunk_timeout_s: float = 15.0) -> None:
        self.pool = WsPool(url)
        self.chunk_timeout_s = chunk_timeout_s

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Audio chunks of ``text``. Stopping early discards the connection, which is how a
        synthesis is cancelled: the service stops when its client goes away.

        A connection lost before the first chunk (a replica going down, a dropped idle
        connection) is retried once on a new one; after it, the reply is cut: asking again
        would say its start twice."""
        started = False
        try:
            # aclosing: a caller that stops early must close the connection now (the cancel).
            async with aclosing(self._synthesize(text)) as chunks:
                async for chunk in chunks:
                    started = True
                    yield chunk
        except ConnectionLost as err:
            if started:
                raise
            log.info("tts connection lost before the first chunk, asking again", error=str(err))
            async with aclosing(self._synthesize(text)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
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
