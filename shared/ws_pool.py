"""A small pool of WebSocket client connections to a service, used one request at a time.

The xRx STT and TTS protocols carry no request ids, so a connection serves one request at a
time. A connection that failed or was abandoned mid-request is closed, never reused. After a
failed connect, further connects wait out a growing backoff and fail fast meanwhile, so a down
service costs a request nothing but a clear error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import websockets
from websockets.asyncio.client import ClientConnection

log = structlog.get_logger(__name__)


class ServiceUnavailable(Exception):
    """The service cannot be reached now."""


class ConnectionLost(ServiceUnavailable):
    """The service closed the connection before answering: a replica going down (a rolling
    restart closes its clients with 1012), or an idle connection it dropped. A request that
    can be asked again is asked once more, on a new connection (another replica, or this one
    back): the STT and TTS bridges' clients do."""


# Connections kept open between requests. A VAD batch ends a few dozen utterances at once
# under load, and each is a request at the same moment: a pool of 4 closed all but four of
# the burst's connections and opened them again for the next (a TCP connect, a handshake and
# a proxy lookup each: a tenth of the STT bridge's CPU at N=500).
MAX_IDLE = 64


class WsPool:
    def __init__(self, url: str, *, max_idle: int = MAX_IDLE, connect_timeout: float = 3.0,
                 backoff_base: float = 0.2, backoff_cap: float = 2.0) -> None:
        self.url, self.max_idle, self.connect_timeout = url, max_idle, connect_timeout
        self._idle: list[ClientConnection] = []
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._backoff = 0.0
        self._retry_at = 0.0

    async def open(self) -> ClientConnection:
        """A new connection, under the backoff; the pool reuses it only via ``connection``,
        a caller that streams keeps it."""
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise ServiceUnavailable(f"{self.url} is down; next attempt in {wait:.1f}s")
        try:
            # No per-message deflate: the payload is PCM, which does not compress, and
            # compressing it was half of a bridge's CPU.
            ws = await asyncio.wait_for(
                websockets.connect(self.url, max_size=None, compression=None),
                self.connect_timeout)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
            self._backoff = min(self._backoff_cap, max(self._backoff_base, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            log.warning("service unreachable", url=self.url, error=str(err),
                        retry_in_s=self._backoff)
            raise ServiceUnavailable(f"cannot connect to {self.url}: {err}") from err
        self._backoff, self._retry_at = 0.0, 0.0
        return ws

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[ClientConnection]:
        while self._idle and self._idle[-1].state is not websockets.State.OPEN:
            await self._idle.pop().close()  # the service closed it while idle (a restart)
        ws = self._idle.pop() if self._idle else await self.open()
        healthy = False
        try:
            yield ws
            healthy = True
        except websockets.ConnectionClosed as err:
            raise ConnectionLost(f"{self.url} closed the connection: {err}") from err
        finally:
            if healthy and ws.state is websockets.State.OPEN and len(self._idle) < self.max_idle:
                self._idle.append(ws)
            else:
                await ws.close()

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().close()
