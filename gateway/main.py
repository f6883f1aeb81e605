"""``xrx gateway``: serve the WebSocket endpoint with uvicorn."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.ws_protocol import AudioFastPath
from shared import partition_count, topology
from shared.startup import start


def run() -> None:
    settings = start("gateway")
    partition_count.check(settings, "gateway")
    topology.configure(settings.PARTITIONS)
    uvicorn.run(create_app(settings), host=settings.GATEWAY_HOST, port=settings.GATEWAY_PORT,
                ws=AudioFastPath, ws_max_size=settings.MAX_FRAME_BYTES, log_config=None,
                # Most of what crosses the socket is PCM, which deflate cannot shrink but
                # would cost the gateway CPU on every frame, both ways.
                ws_per_message_deflate=False,
                timeout_graceful_shutdown=10)
