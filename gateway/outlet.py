"""What one client connection receives: ordering, fencing and paired thinking signals."""

from __future__ import annotations

import asyncio

import structlog
from starlette.websockets import WebSocket, WebSocketState

from gateway.metrics import FENCED_DROPPED, REPLIES_OUT
from shared.messages import Reply, Signal
from shared.turns import is_fenced

log = structlog.get_logger(__name__)

# A client this far behind is not reading; dropping it beats holding its backlog forever.
MAX_BACKLOG = 20_000
CLOSE_TRY_AGAIN_LATER = 1013


class Outlet:
    """Delivers a session's replies to its WebSocket in stream order.

    The reply reader pushes entries without waiting on the client; one sender task per
    connection writes them, so a slow client never holds up the others.
    """

    def __init__(self, sid: str, ws: WebSocket) -> None:
        self.sid, self.ws = sid, ws
        self.last_id = b"0-0"
        self.fence = 0
        self._thinking_turn: int | None = None
        self._last_seq: dict[int, int] = {}  # turn -> highest numbered output delivered
        self._queue: asyncio.Queue[Reply | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._send_loop())
        self._closer: asyncio.Task[None] | None = None

    def raise_fence(self, fence: int) -> None:
        self.fence = max(self.fence, fence)

    def push(self, entry_id: bytes, reply: Reply) -> None:
        self.last_id = entry_id
        if self._queue.qsize() >= MAX_BACKLOG:
            if not self._task.done():
                log.warning("client not reading, dropping connection", session_id=self.sid)
                self._task.cancel()
                self._closer = asyncio.create_task(self._close_lagging())
            return
        self._queue.put_nowait(reply)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._task, timeout=2)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()

    async def _close_lagging(self) -> None:
        try:
            await self.ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="client is not reading")
        except (RuntimeError, OSError):
            pass

    def _admit(self, reply: Reply) -> bool:
        """Whether a reply may reach the client now; keeps thinking signals paired."""
        if reply.content == Signal.STARTED_THINKING:
            # A turn re-run by a replica that took over the session starts only once.
            if is_fenced(reply.turn, self.fence) or self._thinking_turn == reply.turn:
                return False
            self._thinking_turn = reply.turn
            return True
        if reply.content == Signal.ENDED_THINKING:
            # Delivered even for a cancelled turn: the client saw it start, so it must end.
            if self._thinking_turn != reply.turn:
                return False
            self._thinking_turn = None
            return True
        if is_fenced(reply.turn, self.fence):
            return False
        if reply.seq:
            if reply.seq <= self._last_seq.get(reply.turn, 0):
                return False  # already delivered by the run before a failover
            if reply.turn not in self._last_seq:
                # Only live turns matter; older entries go.
                self._last_seq = {t: s for t, s in self._last_seq.items() if t >= self.fence}
            self._last_seq[reply.turn] = reply.seq
        return True

    async def _send_loop(self) -> None:
        while (reply := await self._queue.get()) is not None:
            if not self._admit(reply):
                FENCED_DROPPED.inc()
                continue
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                if reply.is_audio:
                    await self.ws.send_bytes(reply.pcm)
                else:
                    await self.ws.send_text(reply.to_client())
            except (RuntimeError, OSError) as err:
                log.info("client gone while sending", session_id=self.sid, error=str(err))
                return
            REPLIES_OUT.labels("binary" if reply.is_audio else reply.type).inc()
