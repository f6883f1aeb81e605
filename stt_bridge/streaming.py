"""A session's continuous audio stream to a streaming STT provider (deepgram-style): audio
goes out as it arrives, and every text frame that comes back is a final transcript."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
import websockets
from websockets.asyncio.client import ClientConnection

from shared.ws_pool import ServiceUnavailable, WsPool

log = structlog.get_logger(__name__)

OnText = Callable[[str], Awaitable[None]]
OnDown = Callable[[str], Awaitable[None]]


class StreamingStt:
    def __init__(self, pool: WsPool, on_text: OnText, on_down: OnDown) -> None:
        self.pool, self.on_text, self.on_down = pool, on_text, on_down
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._down_reported = False

    async def send(self, pcm: bytes) -> None:
        """Send one frame; a frame sent while the service is down is dropped (it is live
        audio: replaying it late would only confuse the transcript)."""
        try:
            if self._ws is None:
                self._ws = await self.pool.open()
                self._reader = asyncio.create_task(self._read(self._ws))
                self._down_reported = False
            await self._ws.send(pcm)
        except (ServiceUnavailable, websockets.ConnectionClosed, OSError) as err:
            await self._drop()
            if not self._down_reported:
                self._down_reported = True
                await self.on_down(str(err))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                text = (frame.decode(errors="replace") if isinstance(frame, bytes)
                        else frame).strip()
                if text:
                    await self.on_text(text)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def aclose(self) -> None:
        await self._drop()
        if self._reader is not None:
            self._reader.cancel()
