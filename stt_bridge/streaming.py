"""A session's continuous audio stream to a streaming STT provider (deepgram-style): audio
goes out as it arrives, and every text frame that comes back is a final transcript."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
import websockets
from websockets.asyncio.client import ClientConnection

from shared.ws_pool import ServiceUnavailable, WsPool

log = structlog.get_logger(__name__)

OnText = Callable[[str], Awaitable[None]]
OnDown = Callable[[str], Awaitable[None]]

# After the service closed the stream with an error (its provider refused the key, ran out of
# quota, dropped the connection), wait this long before streaming again, doubling to the cap:
# audio keeps arriving every few ms, and each frame must not become a failed handshake.
RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 5.0
# Audio flows continuously, so one outage would otherwise repeat the message at every retry.
DOWN_REPORT_INTERVAL_S = 10.0
NORMAL_CLOSURE = 1000


class StreamingStt:
    def __init__(self, pool: WsPool, on_text: OnText, on_down: OnDown) -> None:
        self.pool, self.on_text, self.on_down = pool, on_text, on_down
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_report = -DOWN_REPORT_INTERVAL_S
        self._retry_at = 0.0
        self._backoff = 0.0

    async def send(self, pcm: bytes) -> None:
        """Send one frame; a frame sent while the service is down is dropped (it is live
        audio: replaying it late would only confuse the transcript)."""
        try:
            if self._ws is None:
                if time.monotonic() < self._retry_at:
                    return
                self._ws = await self.pool.open()
                self._reader = asyncio.create_task(self._read(self._ws))
            await self._ws.send(pcm)
        except (ServiceUnavailable, websockets.ConnectionClosed, OSError) as err:
            await self._drop()
            await self._down(str(err))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                text = (frame.decode(errors="replace") if isinstance(frame, bytes)
                        else frame).strip()
                if text:
                    self._backoff = 0.0  # the stream works: a later failure is news again
                    self._last_report = -DOWN_REPORT_INTERVAL_S
                    await self.on_text(text)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
        code = ws.close_code
        if code is not None and code != NORMAL_CLOSURE:
            self._backoff = min(RECONNECT_CAP_S, max(RECONNECT_BASE_S, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            await self._down(ws.close_reason or f"stream closed with code {code}")

    async def _down(self, error: str) -> None:
        now = time.monotonic()
        if now - self._last_report >= DOWN_REPORT_INTERVAL_S:
            self._last_report = now
            await self.on_down(error)
        else:
            log.info("speech recognition still unavailable", error=error)

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def aclose(self) -> None:
        await self._drop()
        if self._reader is not None:
            self._reader.cancel()
