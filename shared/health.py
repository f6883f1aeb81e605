"""The /healthz, /readyz and /metrics endpoints every long-lived process serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadyCheck = Callable[[], Awaitable[bool]]


def health_routes(ready: ReadyCheck) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ok = await ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]


async def serve_health(port: int, ready: ReadyCheck) -> asyncio.Task[None] | None:
    """Serve the health endpoints of a worker in the background; ``port`` -1 disables them."""
    if port < 0:
        return None
    config = uvicorn.Config(Starlette(routes=health_routes(ready)), host="0.0.0.0", port=port,
                            log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    # The worker owns signal handling; the health server must not install its own.
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    return asyncio.create_task(server.serve())
