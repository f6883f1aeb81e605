"""The /healthz, /readyz and /metrics endpoints every long-lived process serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadyCheck = Callable[[], Awaitable[bool]]


async def metrics(_: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def health_routes(ready: ReadyCheck) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ok = await ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    return [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a worker, which owns SIGTERM: it must not take the signal."""

    def capture_signals(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return nullcontext()


class HealthServer:
    def __init__(self, host: str, port: int, ready: ReadyCheck) -> None:
        config = uvicorn.Config(Starlette(routes=health_routes(ready)), host=host,
                                port=port, log_config=None, lifespan="off")
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve())

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._task


def serve_health(host: str, port: int, ready: ReadyCheck) -> HealthServer | None:
    """Serve a worker's health endpoints in the background; ``port`` -1 disables them."""
    return HealthServer(host, port, ready) if port >= 0 else None
