"""Client of the xRx STT service: one utterance of PCM in, one transcript out."""

from __future__ import annotations

import asyncio

from shared.ws_pool import ServiceUnavailable, WsPool


class SttClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.pool = WsPool(url)
        self.timeout_s = timeout_s

    async def transcribe(self, pcm: bytes) -> str:
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
