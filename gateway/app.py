"""The gateway: the xRx WebSocket endpoint, thin over Redis Streams."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import inbound, sessions
from gateway.audio_ingest import AudioIngest
from gateway.auth import AuthResult, check_api_key
from gateway.metrics import AUTH_FAILURES, BAD_FRAMES, CONNECTIONS, FRAMES_IN
from gateway.outlet import Outlet
from gateway.placement import Placement
from gateway.replies import ReplyReader, stop_task
from shared.config import DEFAULT_API_KEY, Settings
from shared.health import health_routes
from shared.messages import (
    FrameError,
    MsgType,
    User,
    check_audio_frame,
    client_message,
    parse_client_frame,
)
from shared.redis_io import TRANSIENT, connect, ping

log = structlog.get_logger(__name__)

WS_PATH = "/api/v1/ws"
STATIC_DIR = Path(__file__).parent / "static"
CLOSE_TOO_BIG = 1009
UNAVAILABLE = "the service is temporarily unavailable; your message was not delivered, retry"
AUDIO_UNAVAILABLE = "the service is temporarily unavailable; some of your audio was lost"
AUDIO_FRAMES_IN = FRAMES_IN.labels("audio")


class Gateway:
    def __init__(self, settings: Settings, r: Redis) -> None:
        self.settings, self.r = settings, r
        self.gateway_id = settings.WORKER_ID or uuid.uuid4().hex[:12]
        self.reader = ReplyReader(r)
        self.audio = AudioIngest(r, self._audio_lost)
        self.placement = Placement(r)

    async def _audio_lost(self, sid: str) -> None:
        outlet = self.reader.outlets.get(sid)
        if outlet is not None:
            try:
                await self._send_error(outlet.ws, AUDIO_UNAVAILABLE)
            except (RuntimeError, OSError):
                pass  # the client left meanwhile

    async def keep_sessions_alive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.SESSION_TTL_S / 3)
            try:
                lost = await sessions.refresh_sessions(self.r, list(self.reader.outlets),
                                                       self.settings.SESSION_TTL_S)
                for sid in lost:
                    # Redis restarted without its data: register the live session again so
                    # the stages pick it up; the conversation history is gone with it.
                    outlet = self.reader.outlets.get(sid)
                    log.warning("session record lost, registering again", session_id=sid)
                    await sessions.open_session(self.r, sid, self.gateway_id,
                                                self.settings.SESSION_TTL_S,
                                                last_turn=outlet.fence if outlet else 0)
            except TRANSIENT as err:
                log.warning("could not refresh sessions", error=str(err))

    async def serve(self, ws: WebSocket) -> None:
        status = check_api_key(ws, self.settings.API_KEY)
        if status != AuthResult.OK:
            AUTH_FAILURES.labels(str(status)).inc()
            reason = "missing API key" if status == AuthResult.MISSING else "invalid API key"
            log.info("connection refused", reason=reason, client=str(ws.client))
            await ws.send_denial_response(PlainTextResponse(reason, status_code=status))
            return
        sid = await self.placement.new_session_id()
        with structlog.contextvars.bound_contextvars(session_id=sid):
            try:
                await sessions.open_session(self.r, sid, self.gateway_id,
                                            self.settings.SESSION_TTL_S)
            except TRANSIENT as err:
                log.error("cannot open session: redis unavailable", error=str(err))
                await ws.send_denial_response(
                    PlainTextResponse("service temporarily unavailable", status_code=503))
                return
            await ws.accept()
            CONNECTIONS.inc()
            log.info("session opened", client=str(ws.client))
            outlet = Outlet(sid, ws)
            try:
                if self.settings.INITIAL_RESPONSE:
                    await ws.send_text(client_message(User.AGENT, self.settings.INITIAL_RESPONSE,
                                                      MsgType.TEXT))
                self.reader.add(outlet)
                await self._receive(ws, sid, outlet)
            finally:
                CONNECTIONS.dec()
                self.reader.remove(sid)
                await outlet.close()
                try:
                    await sessions.close_session(self.r, sid)
                except TRANSIENT as err:
                    # Its record's TTL runs out and the workers reap it.
                    log.warning("could not close session cleanly", error=str(err))
                log.info("session closed")

    async def _receive(self, ws: WebSocket, sid: str, outlet: Outlet) -> None:
        limit = self.settings.MAX_FRAME_BYTES
        while True:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return  # gone, or closed by us (a client that stopped reading)
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > limit:
                BAD_FRAMES.labels("too_big").inc()
                await ws.close(code=CLOSE_TOO_BIG, reason=f"frame over {limit} bytes")
                return
            try:
                if text is not None:
                    msg = parse_client_frame(text)
                    FRAMES_IN.labels(msg.kind.value).inc()
                    outlet.raise_fence(await inbound.publish_input(self.r, sid, msg))
                elif data is not None:
                    check_audio_frame(data)
                    AUDIO_FRAMES_IN.inc()
                    await self.audio.put(sid, data)
            except FrameError as err:
                BAD_FRAMES.labels("invalid").inc()
                log.info("bad client frame", error=str(err))
                await self._send_error(ws, str(err))
            except TRANSIENT as err:
                log.warning("redis unavailable, frame not delivered", error=str(err))
                await self._send_error(ws, UNAVAILABLE)

    @staticmethod
    async def _send_error(ws: WebSocket, message: str) -> None:
        await ws.send_text(client_message(User.SYSTEM, message, MsgType.ERROR))


def create_app(settings: Settings) -> Starlette:
    holder: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.API_KEY == DEFAULT_API_KEY:
            log.warning("API_KEY is the public default '123456': anyone can connect; "
                        "set API_KEY before exposing this gateway")
        r = connect(settings.redis_url, name="gateway")
        gw = Gateway(settings, r)
        holder["gw"] = gw
        tasks = [asyncio.create_task(gw.reader.run()), asyncio.create_task(gw.audio.run()),
                 asyncio.create_task(gw.keep_sessions_alive())]
        log.info("gateway started", gateway_id=gw.gateway_id)
        try:
            yield
        finally:
            for t in tasks:
                await stop_task(t)
            await r.aclose()

    async def ws_endpoint(ws: WebSocket) -> None:
        await holder["gw"].serve(ws)

    async def ready() -> bool:
        gw = holder.get("gw")
        return gw is not None and await ping(gw.r)

    return Starlette(routes=[WebSocketRoute(WS_PATH, ws_endpoint), *health_routes(ready),
                             # A small demo client, so `make up` can be tried in a browser.
                             Mount("/", StaticFiles(directory=STATIC_DIR, html=True))],
                     lifespan=lifespan)
