"""Local fakes of the cloud providers, each speaking that provider's documented wire protocol
(paths, headers, auth, message shapes, audio encodings, error codes), with knobs to refuse a
key, run out of quota, fail, drop the connection mid-stream, and to record what they got."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

API_KEY = "test-key"


@dataclass
class FakeProvider:
    """What every fake shares: its knobs and what it saw."""

    key: str = API_KEY
    fail_status: int | None = None  # answer every request with this status
    fail_once_status: int | None = None  # answer the next request with it, then recover
    drop_after_chunks: int | None = None  # drop the connection after sending this many
    chunk_pause_s: float = 0.01  # between audio chunks, so a cancel lands mid-stream
    requests: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0  # streams sent to the end
    aborted: int = 0  # streams the client walked away from mid-way

    def app(self) -> Starlette:
        raise NotImplementedError

    def refusal(self, presented: str | None) -> int | None:
        """The status this request is refused with, if any."""
        if presented != self.key:
            return 401
        if self.fail_status is not None:
            return self.fail_status
        if self.fail_once_status is not None:
            status, self.fail_once_status = self.fail_once_status, None
            return status
        return None

    async def paced(self, pieces: list[bytes]) -> AsyncIterator[bytes]:
        """An HTTP body streamed piece by piece, counted as completed, dropped or aborted."""
        ended = False
        try:
            for sent, piece in enumerate(pieces):
                if self.drop_after_chunks is not None and sent >= self.drop_after_chunks:
                    ended = True
                    raise RuntimeError("fake drop")  # the body ends short: a dropped stream
                yield piece
                await asyncio.sleep(self.chunk_pause_s)
            ended = True
            self.completed += 1
        finally:
            if not ended:
                self.aborted += 1

    async def wait_for(self, attr: str, value: int, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if getattr(self, attr) >= value:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{attr} stayed at {getattr(self, attr)}, expected {value}")


def error_body(status: int) -> dict[str, Any]:
    messages = {401: "Invalid credentials", 403: "Forbidden",
                429: "Rate limit exceeded", 503: "Service unavailable"}
    return {"error": {"message": messages.get(status, "error"), "code": status}}


async def deny(ws: WebSocket, status: int) -> None:
    """Refuse a WebSocket handshake with an HTTP status, as the providers do."""
    await ws.send_denial_response(JSONResponse(error_body(status), status_code=status))


def tone(rate: int, seconds: float) -> bytes:
    """A 440 Hz tone as s16le mono: audio whose length the tests can check after resampling."""
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def split(pcm: bytes, parts: int) -> list[bytes]:
    """Network-sized pieces; deliberately cut mid-sample so the adapters must re-align."""
    size = len(pcm) // parts + 1
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


@contextlib.asynccontextmanager
async def serve(app: Starlette, *, lifespan: Literal["on", "off"] = "off"
                ) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free port in this event loop; yield its http:// URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan=lifespan,
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("fake provider stopped during start-up")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
