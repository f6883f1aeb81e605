"""The per-session queue shell every bridge shares: a session's entries are decoded, handled
one at a time in order, acknowledged once handled, and left unacknowledged for the next owner
when the session is handed over mid-item.

A stage subclasses :class:`QueuedSession` and fills in what is its own: which entry ends the
session, which entries act at once instead of queueing (a cancel, a speaking event), how an
item is processed, and what to tidy after one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

import structlog

from shared.messages import Entry
from shared.ownership import Acker
from shared.redis_io import Fields
from shared.serial import SerialRunner

E = TypeVar("E", bound=Entry)


class QueuedSession(ABC, Generic[E]):
    entry_type: ClassVar[type[Entry]]
    # On a hand-over, how long the item in flight may run on before it is cut (left pending
    # for the next owner, which runs it again).
    handover_grace_s: ClassVar[float] = 0.0

    def __init__(self, sid: str, acker: Acker) -> None:
        self.sid, self.acker = sid, acker
        self.handing_over = False
        self.queue: SerialRunner[tuple[bytes, E]] = SerialRunner(self._run_item, self._finished,
                                                                 session_id=sid)
        # Processed items whose outcome lives on only in this session's memory (see hold_ack).
        self._held_ids: list[bytes] = []
        self._hold_current = False

    # --- the stage's own part --------------------------------------------------------------

    @abstractmethod
    def is_close(self, entry: E) -> bool: ...

    @abstractmethod
    async def process(self, entry: E) -> None:
        """Handle one queued entry (cancelled when superseded or handed over)."""

    async def act_now(self, entry_id: bytes, entry: E) -> bool:
        """Handle an entry that must not wait behind the queue; True when it was handled
        (and acknowledged) here, False to queue it."""
        return False

    async def after(self, entry: E, cancelled: bool) -> None:
        """Runs after every processed entry, also a cancelled or failed one."""

    async def stopped(self) -> None:
        """Runs once when the session ends here (closed or handed over)."""

    def hold_ack(self) -> None:
        """Leave the item being processed unacknowledged when it is done: what came of it is
        kept in memory for a later item (words held to join the next utterance's), so if the
        session moves or this replica dies before :meth:`release_acks`, the next owner must
        handle it again."""
        self._hold_current = True

    def release_acks(self) -> None:
        """Acknowledge the items held by :meth:`hold_ack`: what came of them is out."""
        if self._held_ids:
            self.acker.ack(*self._held_ids)
            self._held_ids.clear()

    # --- the shell -------------------------------------------------------------------------

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry: E = self.entry_type.decode(fields)  # type: ignore[assignment]
        if self.is_close(entry):
            await self._stop()
            self.acker.ack(entry_id, *(i for i, _ in self.queue.take()), *self._held_ids)
            self._held_ids.clear()
            return True
        if not await self.act_now(entry_id, entry):
            self.queue.put((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        if handing_over:
            self.handing_over = True
            if self.handover_grace_s:
                await self.queue.wait_current(self.handover_grace_s)
        await self._stop()

    async def _stop(self) -> None:
        await self.queue.stop()
        await self.stopped()

    async def _run_item(self, item: tuple[bytes, E]) -> None:
        with structlog.contextvars.bound_contextvars(session_id=self.sid):
            await self.process(item[1])

    async def _finished(self, item: tuple[bytes, E], cancelled: bool) -> None:
        await self.after(item[1], cancelled)
        held, self._hold_current = self._hold_current, False
        if cancelled and self.handing_over:
            return  # unfinished: the next owner runs it again
        if held:
            self._held_ids.append(item[0])
            return
        self.acker.ack(item[0])
