"""What one client connection receives: ordering, fencing and paired thinking signals."""

from __future__ import annotations

import asyncio

import structlog
from starlette.websockets import WebSocket, WebSocketState

from gateway.metrics import FENCED_DROPPED, REPLIES_OUT
from shared.messages import REPLY_ID, MsgType, Reply, Signal, User, client_message
from shared.redis_io import id_key
from shared.turns import is_fenced

log = structlog.get_logger(__name__)

# A client this far behind is not reading; dropping it beats holding its backlog forever.
MAX_BACKLOG = 20_000
CLOSE_TRY_AGAIN_LATER = 1013


class Outlet:
    """Delivers a session's replies to its WebSocket in stream order.

    The reply reader pushes entries without waiting on the client; one sender task per
    connection writes them, so a slow client never holds up the others.

    ``with_ids``: the client asked for reply ids (gateway/resume.py): every JSON reply gets an
    ``id`` field and every binary audio frame is preceded by an ``audio_id`` message.
    """

    def __init__(self, sid: str, ws: WebSocket, *, with_ids: bool = False) -> None:
        self.sid, self.ws = sid, ws
        self.with_ids = with_ids
        self.moved = False  # the session was resumed on another connection
        self.last_id = b"0-0"
        self.fence = 0
        self._newest_turn = 0  # the highest turn number seen (a turn may wait unfenced)
        self._thinking_turn: int | None = None
        self._last_seq: dict[int, int] = {}  # turn -> highest numbered output delivered
        self._last_chunk: dict[int, tuple[int, int]] = {}  # turn -> (output, chunk) delivered
        # While resuming: live entries wait here until the missed ones are queued.
        self._held: list[tuple[bytes, Reply]] | None = None
        # Entries at or below this id were received by the client or replayed (resume only).
        self._floor: tuple[int, int] | None = None
        # Resume only: turns up to this one may have started before the client's last reply,
        # so their end may be delivered without a start on this connection (see _admit).
        self._resumed_upto = 0
        self._ended: set[int] = set()
        self._queue: asyncio.Queue[tuple[bytes, Reply] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._send_loop())
        self._closer: asyncio.Task[None] | None = None

    def raise_fence(self, fence: int) -> None:
        self.fence = max(self.fence, fence)

    def saw_turn(self, turn: int) -> None:
        self._newest_turn = max(self._newest_turn, turn)

    @property
    def last_turn(self) -> int:
        """The newest turn this connection knows of: where the session's turn counter
        resumes if Redis loses it (turn numbers must keep growing for the fence and the
        per-turn output numbering to hold)."""
        return max(self.fence, self._newest_turn)

    def start_resume(self, last_id: bytes, fence: int, last_turn: int) -> None:
        """Hold live entries until :meth:`finish_resume` has queued the missed ones.

        Call before the outlet is registered with the reply reader: everything the reader
        reads from then on is held, everything it had read before is replayed from Redis,
        and ids at or below what was already queued are dropped, so the two meet without a
        gap or a duplicate.
        """
        self._held = []
        self._floor = id_key(last_id)
        self.fence = max(self.fence, fence)
        self._resumed_upto = last_turn

    def finish_resume(self, missed: list[tuple[bytes, Reply]]) -> None:
        held, self._held = self._held or [], None
        for entry_id, reply in [*missed, *held]:
            if reply.fence:
                self.raise_fence(reply.fence)
            self.push(entry_id, reply)

    def push(self, entry_id: bytes, reply: Reply) -> None:
        if self._held is not None:
            self._held.append((entry_id, reply))
            return
        if self._floor is not None:
            if id_key(entry_id) <= self._floor:
                return  # the client has it, or it was replayed
            self._floor = None  # from here on the reader's ids are all new
        self.last_id = entry_id
        self.saw_turn(reply.turn)
        if self._queue.qsize() >= MAX_BACKLOG:
            if not self._task.done():
                log.warning("client not reading, dropping connection", session_id=self.sid)
                self._task.cancel()
                self._closer = asyncio.create_task(self._close_lagging())
            return
        self._queue.put_nowait((entry_id, reply))

    def tell(self, reply: Reply) -> None:
        """A message of the gateway's own (turn 0, not from a reply stream), in order with
        the replies; dropped like them when the client is not reading."""
        if self._queue.qsize() < MAX_BACKLOG:
            self._queue.put_nowait((b"", reply))  # no id: not in any stream, not resumable

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
                # A resumed connection: the start went out before the client's last reply.
                if reply.turn > self._resumed_upto or reply.turn in self._ended:
                    return False
                self._ended.add(reply.turn)
                return True
            if reply.turn <= self._resumed_upto:
                self._ended.add(reply.turn)
            self._thinking_turn = None
            return True
        if is_fenced(reply.turn, self.fence):
            return False
        if reply.is_audio:
            return self._admit_audio(reply)
        if reply.seq:
            if reply.seq <= self._last_seq.get(reply.turn, 0):
                return False  # already delivered by the run before a failover
            if reply.turn not in self._last_seq:
                # Only live turns matter; older entries go.
                self._last_seq = {t: s for t, s in self._last_seq.items() if t >= self.fence}
            self._last_seq[reply.turn] = reply.seq
        return True

    def _admit_audio(self, reply: Reply) -> bool:
        """Chunks of a numbered output are numbered too: a reply spoken again from its start
        after a TTS replica died goes on where the client's audio stopped."""
        if not (reply.seq and reply.chunk):
            return True
        key = (reply.seq, reply.chunk)
        if key <= self._last_chunk.get(reply.turn, (0, 0)):
            return False
        if reply.turn not in self._last_chunk:
            self._last_chunk = {t: k for t, k in self._last_chunk.items() if t >= self.fence}
        self._last_chunk[reply.turn] = key
        return True

    async def _send_loop(self) -> None:
        while (item := await self._queue.get()) is not None:
            entry_id, reply = item
            if not self._admit(reply):
                FENCED_DROPPED.inc()
                continue
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                if reply.is_audio:
                    if self.with_ids:
                        # A binary frame cannot carry its id: it comes just before it.
                        await self.ws.send_text(client_message(
                            User.SYSTEM, "", MsgType.AUDIO_ID, **{REPLY_ID: entry_id.decode()}))
                    await self.ws.send_bytes(reply.pcm)
                elif self.with_ids and entry_id:
                    await self.ws.send_text(reply.to_client(**{REPLY_ID: entry_id.decode()}))
                else:
                    await self.ws.send_text(reply.to_client())
            except (RuntimeError, OSError) as err:
                log.info("client gone while sending", session_id=self.sid, error=str(err))
                return
            REPLIES_OUT.labels("binary" if reply.is_audio else reply.type).inc()
