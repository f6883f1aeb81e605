"""The TTS WebSocket server: JSON commands in, PCM chunks and ``done`` out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.tts.audio import chunk_size
from services.tts.cache import AudioCache
from services.tts.protocols import Synthesizer
from services.tts.providers import load_synthesizer, provider_factory
from services.tts.session import TtsSession
from shared.config import Settings, config_error, load_settings
from shared.health import health_routes
from shared.startup import start

log = structlog.get_logger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013


class TtsState:
    """What the endpoints share: the synthesizer (once loaded) and the audio cache."""

    def __init__(self, settings: Settings, synthesizer: Synthesizer | None) -> None:
        self.settings = settings
        self.synthesizer = synthesizer
        cache_dir = Path(settings.TTS_CACHE_DIR) if settings.TTS_CACHE_DIR else None
        self.cache = AudioCache(cache_dir)

    async def ready(self) -> bool:
        return self.synthesizer is not None


def create_app(settings: Settings | None = None,
               synthesizer: Synthesizer | None = None) -> Starlette:
    """The TTS app. Without ``synthesizer`` the configured provider loads during start-up.

    Raises ValueError at once for an unknown ``TTS_PROVIDER``, a cloud provider without its
    API key or a synthesizer whose rate is not ``TTS_SAMPLE_RATE``, before anything is served.
    """
    settings = settings or load_settings()
    if synthesizer is None:
        provider_factory(settings.TTS_PROVIDER)
        missing = settings.missing_provider_key("tts")
        if missing:
            raise ValueError(missing)
    elif synthesizer.sample_rate != settings.TTS_SAMPLE_RATE:
        raise ValueError(f"synthesizer produces {synthesizer.sample_rate} Hz but "
                         f"TTS_SAMPLE_RATE is {settings.TTS_SAMPLE_RATE}")
    state = TtsState(settings, synthesizer)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if state.synthesizer is None:
            state.synthesizer = await asyncio.to_thread(load_synthesizer, settings)
        yield

    async def endpoint(ws: WebSocket) -> None:
        await serve_connection(ws, state)

    app = Starlette(routes=[WebSocketRoute(settings.TTS_PATH, endpoint),
                            *health_routes(state.ready)],
                    lifespan=lifespan)
    app.state.tts = state
    return app


async def serve_connection(ws: WebSocket, state: TtsState) -> None:
    synthesizer = state.synthesizer
    if synthesizer is None:
        await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="voice not loaded yet")
        return
    await ws.accept()
    session = TtsSession(ws, synthesizer, state.cache,
                         chunk_size(synthesizer.sample_rate, state.settings.TTS_CHUNK_MS))
    client = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
    with structlog.contextvars.bound_contextvars(client=client):
        log.info("tts connection opened")
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    log.warning("binary frame ignored: the TTS protocol takes JSON commands")
                    continue
                await session.handle_text(text)
        except WebSocketDisconnect:
            pass
        finally:
            await session.cancel()
        log.info("tts connection closed")


def run() -> None:
    settings = start("tts")
    try:
        app = create_app(settings)
    except ValueError as err:
        raise config_error(str(err)) from None
    uvicorn.run(app, host="0.0.0.0", port=settings.TTS_PORT, log_config=None,
                timeout_graceful_shutdown=5)
