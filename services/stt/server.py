"""The STT WebSocket server: one binary utterance in, one text transcript out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.cloud import CLOSE_PROVIDER_FAILED, ProviderError
from services.stt.audio import duration_s, utterance_problem
from services.stt.protocols import StreamingTranscriber, Transcriber
from services.stt.providers import AnyTranscriber, check_settings, load_transcriber
from shared.config import Settings, config_error, load_settings
from shared.health import health_routes
from shared.startup import start

log = structlog.get_logger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013


class SttState:
    """What the endpoints share: the transcriber, once the lifespan has loaded it."""

    def __init__(self, transcriber: AnyTranscriber | None) -> None:
        self.transcriber = transcriber

    async def ready(self) -> bool:
        return self.transcriber is not None


def create_app(settings: Settings | None = None,
               transcriber: AnyTranscriber | None = None) -> Starlette:
    """The STT app. Without ``transcriber`` the configured provider loads during start-up.

    Raises ValueError at once for an unknown ``STT_PROVIDER``, a cloud provider without its
    API key or a local model that is not on disk, before anything is served.
    """
    settings = settings or load_settings()
    if transcriber is None:
        check_settings(settings)
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
            if isinstance(transcriber, StreamingTranscriber):
                await _serve_stream(ws, transcriber)
            else:
                await _serve_utterances(ws, transcriber)
        except WebSocketDisconnect:
            pass
        except ProviderError as err:
            await _provider_failed(ws, err)
        log.info("stt connection closed")


async def _provider_failed(ws: WebSocket, err: ProviderError) -> None:
    """The protocol has no error frame: the client learns of a provider failure (bad key,
    quota, outage) as a close with 1011 and the reason, and reconnects for its next try."""
    log.warning("stt provider failed", error=str(err), status=err.status)
    with contextlib.suppress(Exception):  # the client may be gone already
        await ws.close(code=CLOSE_PROVIDER_FAILED, reason=err.close_reason())


async def _serve_utterances(ws: WebSocket, transcriber: Transcriber) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        pcm = message.get("bytes")
        if pcm is None:
            log.info("text frame ignored: the STT protocol only takes audio")
            continue
        await ws.send_text(await _transcript(transcriber, pcm))


async def _serve_stream(ws: WebSocket, transcriber: StreamingTranscriber) -> None:
    """Every binary frame feeds one continuous stream; each final transcript goes back as a
    text frame as soon as the provider returns it."""
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def audio() -> AsyncIterator[bytes]:
        while (frame := await frames.get()) is not None:
            yield frame

    async def transcripts() -> None:
        try:
            async for text in transcriber.stream(audio()):
                log.info("streamed transcript", chars=len(text))
                await ws.send_text(text)
        except ProviderError as err:
            await _provider_failed(ws, err)

    sender = asyncio.create_task(transcripts())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            pcm = message.get("bytes")
            if pcm:
                frames.put_nowait(pcm)
    finally:
        frames.put_nowait(None)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _transcript(transcriber: Transcriber, pcm: bytes) -> str:
    """The answer for one utterance; ``""`` for audio we refuse or a local decoder fails on.

    A cloud provider's failure raises :class:`ProviderError`: the user must hear about it.
    """
    problem = utterance_problem(pcm)
    if problem is not None:
        log.warning("utterance rejected", reason=problem, bytes=len(pcm))
        return ""
    started = time.perf_counter()
    try:
        text = await transcriber.transcribe(pcm)
    except ProviderError:
        raise
    except Exception:
        log.exception("transcription failed", bytes=len(pcm))
        return ""
    elapsed = time.perf_counter() - started
    audio_s = duration_s(pcm)
    log.info("utterance transcribed", audio_s=round(audio_s, 3), decode_s=round(elapsed, 3),
             rtf=round(elapsed / audio_s, 3), chars=len(text))
    return text


def run() -> None:
    settings = start("stt")
    try:
        app = create_app(settings)
    except ValueError as err:
        raise config_error(str(err)) from None
    uvicorn.run(app, host="0.0.0.0", port=settings.STT_PORT, log_config=None,
                timeout_graceful_shutdown=5)
