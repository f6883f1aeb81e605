"""``xrx gateway``: serve the WebSocket endpoint with uvicorn."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.ws_protocol import AudioFastPath
from shared import topology
from shared.config import load_settings
from shared.logs import configure_logging
from shared.priority import set_niceness


def run() -> None:
    settings = load_settings()
    configure_logging(settings, "gateway")
    set_niceness(settings.CPU_NICE)
    topology.configure(settings.PARTITIONS)
    uvicorn.run(create_app(settings), host=settings.GATEWAY_HOST, port=settings.GATEWAY_PORT,
                ws=AudioFastPath, ws_max_size=settings.MAX_FRAME_BYTES, log_config=None,
                # Most of what crosses the socket is PCM, which deflate cannot shrink but
                # would cost the gateway CPU on every frame, both ways.
                ws_per_message_deflate=False,
                timeout_graceful_shutdown=10)
