"""Client of the xRx STT service: one utterance of PCM in, one transcript out."""

from __future__ import annotations

import asyncio

import structlog

from shared.ws_pool import ConnectionLost, ServiceUnavailable, WsPool

log = structlog.get_logger(__name__)


class SttClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.pool = WsPool(url)
        self.timeout_s = timeout_s

    async def transcribe(self, pcm: bytes) -> str:
        try:
            return await self._transcribe(pcm)
        except ConnectionLost as err:
            # Transcribing again is harmless: a replica that went down mid-utterance (or a
            # connection it dropped) is no reason to tell the user the service is down.
            log.info("stt connection lost, asking again", error=str(err))
            return await self._transcribe(pcm)

    async def _transcribe(self, pcm: bytes) -> str:
        async with self.pool.connection() as ws:
            await ws.send(pcm)
            try:
                reply = await asyncio.wait_for(ws.recv(), self.timeout_s)
            except TimeoutError:
                raise ServiceUnavailable(f"no transcript within {self.timeout_s}s") from None
        if isinstance(reply, bytes):
            reply = reply.decode(errors="replace")
        return reply.strip()

    async def aclose(self) -> None:
        await self.pool.aclose()
