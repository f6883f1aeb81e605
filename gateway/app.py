"""The gateway: the xRx WebSocket endpoint, thin over Redis Streams."""

from __future__ import annotations

import asyncio
import time
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

from gateway import inbound, reply_trim, resume, sessions
from gateway.audio_ingest import AudioIngest
from gateway.auth import AuthResult, check_api_key
from gateway.metrics import AUTH_FAILURES, BAD_FRAMES, CONNECTIONS, FRAMES_IN
from gateway.outage import OutageNotices
from gateway.outlet import Outlet
from gateway.placement import Placement
from gateway.replies import ReplyReader, stop_task
from gateway.ws_protocol import AUDIO_SINK, AudioSink
from shared import keys, topology
from shared.config import DEFAULT_API_KEY, Settings
from shared.health import health_routes
from shared.messages import (
    FrameError,
    MsgType,
    Reply,
    User,
    check_audio_frame,
    client_message,
    parse_client_frame,
)
from shared.redis_io import TRANSIENT, connect, ping

log = structlog.get_logger(__name__)

WS_PATH = "/api/v1/ws"
# A key this gateway keeps in Redis: gone means Redis lost its data (checked every second).
MARKER_CHECK_S = 1.0
MARKER_TTL_S = 3600
STATIC_DIR = Path(__file__).parent / "static"
CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
# The session was resumed on another connection (a private-use code, 4000-4999).
CLOSE_RESUMED_ELSEWHERE = 4001
# How long a resume waits for the reply reader's first read positions (gateway start-up).
RESUME_WAIT_S = 5.0
UNAVAILABLE = "the service is temporarily unavailable; your message was not delivered, retry"


class Gateway:
    def __init__(self, settings: Settings, r: Redis) -> None:
        self.settings, self.r = settings, r
        self.gateway_id = settings.WORKER_ID or uuid.uuid4().hex[:12]
        self.reader = ReplyReader(r)
        self.notices = OutageNotices(lambda sid, text: self._tell(sid, text, MsgType.ERROR),
                                     lambda sid, text: self._tell(sid, text, MsgType.INFO))
        # Twice what the VAD takes: a take-over replays up to ~3 s from a checkpoint.
        self.audio = AudioIngest(r, self.notices, keep_ms=2 * settings.VAD_MAX_LAG_MS,
                                 pacing=settings.audio_pacing)
        self.placement = Placement(r)

    def _tell(self, sid: str, text: str, type_: MsgType) -> None:
        """Queue a system message behind the session's replies (never waits on the client)."""
        outlet = self.reader.outlets.get(sid)
        if outlet is not None:
            outlet.tell(Reply(session_id=sid, user=User.SYSTEM, type=type_, content=text))

    async def keep_sessions_alive(self) -> None:
        """Refresh the records of this gateway's sessions every third of their TTL, and at
        once when Redis comes back without its data (a marker key this gateway keeps has
        vanished): the stages must know the sessions again before their next input."""
        marker = keys.gateway_marker(self.gateway_id)
        next_refresh = 0.0
        while True:
            await asyncio.sleep(MARKER_CHECK_S)
            try:
                emptied = await self.r.set(marker, "1", nx=True, ex=MARKER_TTL_S)
                if not emptied and time.monotonic() < next_refresh:
                    continue
                next_refresh = time.monotonic() + self.settings.SESSION_TTL_S / 3
                await self._refresh_sessions()
            except TRANSIENT as err:
                log.warning("could not refresh sessions", error=str(err))

    async def _refresh_sessions(self) -> None:
        lost, moved = await sessions.refresh_sessions(
            self.r, list(self.reader.outlets), self.settings.SESSION_TTL_S, self.gateway_id)
        for sid in moved:
            # Resumed on another gateway while this connection looked alive.
            if (outlet := self.reader.outlets.get(sid)) is not None:
                await self._hand_off(outlet)
        for sid in lost:
            # Redis restarted without its data: register the live session again so the
            # stages pick it up; the conversation history is gone with it. One failure does
            # not stop the others.
            outlet = self.reader.outlets.get(sid)
            log.warning("session record lost, registering again", session_id=sid)
            try:
                await sessions.open_session(self.r, sid, self.gateway_id,
                                            self.settings.SESSION_TTL_S,
                                            last_turn=outlet.last_turn if outlet else 0)
            except TRANSIENT as err:
                log.warning("could not register session again", session_id=sid,
                            error=str(err))

    async def serve(self, ws: WebSocket) -> None:
        status = check_api_key(ws, self.settings.API_KEY)
        if status != AuthResult.OK:
            AUTH_FAILURES.labels(str(status)).inc()
            reason = "missing API key" if status == AuthResult.MISSING else "invalid API key"
            log.info("connection refused", reason=reason, client=str(ws.client))
            await ws.send_denial_response(PlainTextResponse(reason, status_code=status))
            return
        try:
            req = resume.parse_request(dict(ws.query_params))
        except resume.ResumeError as err:
            await ws.send_denial_response(PlainTextResponse(str(err), status_code=400))
            return
        # A new session is opened before the handshake completes, so a client can be refused
        # with a plain 503 while Redis is down. A client that leaves before ``accept`` (its
        # task is cancelled, or accept fails) must leave nothing behind: until then, whatever
        # happens, a new session's record is deleted again. (A resumed session stays as it
        # was: kept for a resume until its TTL runs out.)
        opening: list[str] = []  # a new session's id, from just before its record is written
        try:
            try:
                sid, resumed = await self._open_or_resume(req, opening)
            except TRANSIENT as err:
                opening.clear()  # nothing was written
                log.error("cannot open session: redis unavailable", error=str(err))
                await ws.send_denial_response(
                    PlainTextResponse("service temporarily unavailable", status_code=503))
                return
            await ws.accept()
            opening.clear()
        finally:
            if opening:
                await asyncio.shield(self._discard(opening[0]))
        with structlog.contextvars.bound_contextvars(session_id=sid):
            CONNECTIONS.inc()
            log.info("session opened", client=str(ws.client), resumed=resumed)
            outlet = Outlet(sid, ws, with_ids=req.session_info)
            code: int | None = None
            try:
                if resumed:
                    await self._resume(outlet, req)
                else:
                    if req.session_info:
                        await ws.send_text(self._session_message(sid, req, resumed=False))
                    if self.settings.INITIAL_RESPONSE:
                        await ws.send_text(client_message(
                            User.AGENT, self.settings.INITIAL_RESPONSE, MsgType.TEXT))
                    self.reader.add(outlet)
                code = await self._receive(ws, sid, outlet)
            except (*TRANSIENT, TimeoutError) as err:  # resuming: the client may try again
                log.warning("redis unavailable while resuming", error=str(err))
                code = CLOSE_TRY_AGAIN_LATER
                await self._close(ws, CLOSE_TRY_AGAIN_LATER, UNAVAILABLE)
            finally:
                CONNECTIONS.dec()
                self.reader.remove(sid, outlet)
                self.notices.forget(sid)
                await outlet.close()
                await self._end(sid, outlet, keep=req.session_info and code is not None
                                and code != CLOSE_NORMAL)

    async def _open_or_resume(self, req: resume.ResumeRequest,
                              opening: list[str]) -> tuple[str, bool]:
        """The session of this connection: the one asked for if it still exists (taken
        over), else a new one (its id put in ``opening`` before its record is written)."""
        ttl = self.settings.SESSION_TTL_S
        if req.session_id and await resume.take_over(self.r, req.session_id,
                                                      self.gateway_id, ttl):
            return req.session_id, True
        sid = await self.placement.new_session_id()
        opening.append(sid)
        await sessions.open_session(self.r, sid, self.gateway_id, ttl)
        return sid, False

    async def _discard(self, sid: str) -> None:
        try:
            await sessions.discard_session(self.r, sid)
            log.info("client left during the handshake, session discarded", session_id=sid)
        except TRANSIENT as err:
            log.warning("could not discard a session never accepted", session_id=sid,
                        error=str(err))

    async def _resume(self, outlet: Outlet, req: resume.ResumeRequest) -> None:
        """Replay what the client missed after ``req.last_id``, then go on live."""
        sid = outlet.sid
        await asyncio.wait_for(self.reader.pinned.wait(), RESUME_WAIT_S)
        fence, last_turn = await sessions.turn_state(self.r, sid)
        outlet.start_resume(req.last_id, fence, last_turn)
        replaced = self.reader.add(outlet)
        if replaced is not None:  # the same session, still connected here
            await self._hand_off(replaced)
        entries, trimmed = await resume.missed(
            self.r, sid, req.last_id, self.reader.position(sid),
            topology.reply_keep_s(self.settings.SESSION_TTL_S))
        await outlet.ws.send_text(self._session_message(sid, req, resumed=True,
                                                        replayed=len(entries),
                                                        trimmed=trimmed))
        outlet.finish_resume([(i, Reply.decode(f)) for i, f in entries])
        log.info("session resumed", replayed=len(entries), after=req.last_id.decode())

    @staticmethod
    def _session_message(sid: str, req: resume.ResumeRequest, *, resumed: bool,
                         replayed: int = 0, trimmed: bool = False) -> str:
        content: dict[str, object] = {"session_id": sid, "resumed": resumed}
        if req.session_id and not resumed:
            content["reason"] = "unknown or expired session: this is a new one"
        if resumed:
            content["replayed"] = replayed
            if trimmed:
                content["reason"] = "some replies after last_id were trimmed and are lost"
        return client_message(User.SYSTEM, content, MsgType.SESSION)

    async def _hand_off(self, outlet: Outlet) -> None:
        """Drop a connection whose session was resumed on another connection."""
        outlet.moved = True
        self.reader.remove(outlet.sid, outlet)
        await self._close(outlet.ws, CLOSE_RESUMED_ELSEWHERE, "session resumed elsewhere")

    @staticmethod
    async def _close(ws: WebSocket, code: int, reason: str) -> None:
        try:
            await ws.close(code=code, reason=reason)
        except (RuntimeError, OSError):
            pass  # already closed

    async def _end(self, sid: str, outlet: Outlet, *, keep: bool) -> None:
        """End the session, or keep it for a resume: a client that asked for session ids
        and left without a normal close (1000) may come back within SESSION_TTL_S."""
        try:
            if outlet.moved or await sessions.held_elsewhere(self.r, sid, self.gateway_id):
                log.info("connection closed, session resumed elsewhere")
            elif keep:
                await sessions.refresh_sessions(self.r, [sid], self.settings.SESSION_TTL_S,
                                                self.gateway_id)
                log.info("connection lost, session kept for a resume",
                         window_s=self.settings.SESSION_TTL_S)
            else:
                await sessions.close_session(self.r, sid)
                log.info("session closed")
        except TRANSIENT as err:
            # Its record's TTL runs out and the workers reap it.
            log.warning("could not close session cleanly", error=str(err))

    async def _receive(self, ws: WebSocket, sid: str, outlet: Outlet) -> int | None:
        """Handle the client's frames until it leaves; return its close code (None: closed
        by the gateway). Audio takes the server's short path where it offers one
        (gateway/ws_protocol.py); what that declines arrives here."""
        set_sink = ws.scope.get("extensions", {}).get(AUDIO_SINK)
        if set_sink is not None:
            set_sink(self._audio_sink(sid))
        try:
            return await self._receive_loop(ws, sid, outlet)
        finally:
            if set_sink is not None:
                set_sink(None)

    def _audio_sink(self, sid: str) -> AudioSink:
        limit, offer = self.settings.MAX_FRAME_BYTES, self.audio.offer

        def sink(data: bytes) -> bool:
            if len(data) > limit:
                return False  # closed with 1009 by the receive loop
            try:
                check_audio_frame(data)
            except FrameError:
                return False  # answered with an error by the receive loop
            return offer(sid, data)

        return sink

    async def _receive_loop(self, ws: WebSocket, sid: str, outlet: Outlet) -> int | None:
        limit, text_limit = self.settings.MAX_FRAME_BYTES, self.settings.MAX_TEXT_BYTES
        while True:
            try:
                message = await ws.receive()
            except WebSocketDisconnect as err:
                return err.code
            except RuntimeError:
                return None  # closed by us (a client that stopped reading)
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", CLOSE_NO_STATUS))
            text, data = message.get("text"), message.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > limit:
                BAD_FRAMES.labels("too_big").inc()
                await ws.close(code=CLOSE_TOO_BIG, reason=f"frame over {limit} bytes")
                return None
            if text is not None and size > text_limit:
                # More than a person types or pastes: refused, but the connection stays (the
                # history and every agent call would carry it otherwise).
                BAD_FRAMES.labels("text_too_long").inc()
                await self._send_error(ws, f"text message of {size} bytes is over the "
                                           f"{text_limit}-byte limit; it was not delivered")
                continue
            try:
                if text is not None:
                    msg = parse_client_frame(text)
                    FRAMES_IN.labels(msg.kind.value).inc()
                    start = await inbound.publish_input(self.r, sid, msg)
                    outlet.saw_turn(start.turn)
                    outlet.raise_fence(start.fence)
                    self.notices.ended()
                elif data is not None:
                    check_audio_frame(data)
                    await self.audio.put(sid, data)
            except FrameError as err:
                BAD_FRAMES.labels("invalid").inc()
                log.info("bad client frame", error=str(err))
                await self._send_error(ws, str(err))
            except TRANSIENT as err:
                # Each refused message is told (the user has to send it again), and the
                # session hears once when the service is back.
                log.warning("redis unavailable, frame not delivered", error=str(err))
                self.notices.input_lost(sid)
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
        r = connect(settings, name="gateway")
        gw = Gateway(settings, r)
        holder["gw"] = gw
        tasks = [asyncio.create_task(gw.reader.run()), asyncio.create_task(gw.audio.run()),
                 asyncio.create_task(gw.keep_sessions_alive()),
                 asyncio.create_task(gw.notices.probe(r)),
                 asyncio.create_task(reply_trim.trim_forever(r, settings.SESSION_TTL_S))]
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
