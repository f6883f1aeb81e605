"""The STT WebSocket server: one binary utterance in, one text transcript out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.stt.audio import duration_s, utterance_problem
from services.stt.protocols import Transcriber
from services.stt.providers import load_transcriber, provider_factory
from shared.config import Settings, config_error, load_settings
from shared.health import health_routes
from shared.logs import configure_logging

log = structlog.get_logger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013


class SttState:
    """What the endpoints share: the transcriber, once the lifespan has loaded it."""

    def __init__(self, transcriber: Transcriber | None) -> None:
        self.transcriber = transcriber

    async def ready(self) -> bool:
        return self.transcriber is not None


def create_app(settings: Settings | None = None,
               transcriber: Transcriber | None = None) -> Starlette:
    """The STT app. Without ``transcriber`` the configured provider loads during start-up.

    Raises ValueError at once for an unknown ``STT_PROVIDER``, before anything is served.
    """
    settings = settings or load_settings()
    if transcriber is None:
        provider_factory(settings.STT_PROVIDER)
    state = SttState(transcriber)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if state.transcriber is None:
            state.transcriber = await asyncio.to_thread(load_transcriber, settings)
        yield

    async def endpoint(ws: WebSocket) -> None:
        await serve_connection(ws, state)

    app = Starlette(routes=[WebSocketRoute(settings.STT_PATH, endpoint),
                            *health_routes(state.ready)],
                    lifespan=lifespan)
    app.state.stt = state
    return app


async def serve_connection(ws: WebSocket, state: SttState) -> None:
    transcriber = state.transcriber
    if transcriber is None:
        await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="model not loaded yet")
        return
    await ws.accept()
    client = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
    with structlog.contextvars.bound_contextvars(client=client):
        log.info("stt connection opened")
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                pcm = message.get("bytes")
                if pcm is None:
                    log.info("text frame ignored: the STT protocol only takes audio")
                    continue
                await ws.send_text(await _transcript(transcriber, pcm))
        except WebSocketDisconnect:
            pass
        log.info("stt connection closed")


async def _transcript(transcriber: Transcriber, pcm: bytes) -> str:
    """The answer for one utterance; ``""`` for audio we refuse or fail on, never an error."""
    problem = utterance_problem(pcm)
    if problem is not None:
        log.warning("utterance rejected", reason=problem, bytes=len(pcm))
        return ""
    started = time.perf_counter()
    try:
        text = await transcriber.transcribe(pcm)
    except Exception:
        log.exception("transcription failed", bytes=len(pcm))
        return ""
    elapsed = time.perf_counter() - started
    audio_s = duration_s(pcm)
    log.info("utterance transcribed", audio_s=round(audio_s, 3), decode_s=round(elapsed, 3),
             rtf=round(elapsed / audio_s, 3), chars=len(text))
    return text


def run() -> None:
    settings = load_settings()
    configure_logging(settings, "stt")
    try:
        app = create_app(settings)
    except ValueError as err:
        raise config_error(str(err)) from None
    uvicorn.run(app, host="0.0.0.0", port=settings.STT_PORT, log_config=None,
                timeout_graceful_shutdown=5)
