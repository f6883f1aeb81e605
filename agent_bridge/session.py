"""The agent stage's per-session logic: turns in order, a newer input cancels the current one."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from agent_bridge.agent_client import AgentClient
from agent_bridge.turn import Turn
from shared.config import Settings
from shared.history import HistoryKind, append_history
from shared.messages import AgentInput, InputKind
from shared.ownership import Acker
from shared.redis_io import Fields
from shared.serial import SerialRunner
from shared.turns import fence_of, is_fenced

log = structlog.get_logger(__name__)

# How long a replica shutting down lets a running turn finish before handing it over.
HANDOVER_GRACE_S = 10.0

USER_INPUTS = frozenset({InputKind.TEXT, InputKind.TRANSCRIPT})

Item = tuple[bytes, AgentInput]


class AgentSession:
    def __init__(self, r: Redis, settings: Settings, agent: AgentClient, sid: str,
                 acker: Acker) -> None:
        self.r, self.settings, self.agent, self.sid, self.acker = r, settings, agent, sid, acker
        self._handing_over = False
        self._turns: SerialRunner[Item] = SerialRunner(self._process, self._finished)

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = AgentInput.decode(fields)
        if entry.kind == InputKind.CLOSE:
            await self._turns.stop()
            self.acker.ack(entry_id, *(i for i, _ in self._turns.take()))
            return True
        # Whatever comes next supersedes the turn in flight (the original's behaviour).
        self._turns.cancel_current()
        self._turns.put((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        if handing_over:
            # Let a running turn finish; what is unfinished stays pending for the next owner.
            self._handing_over = True
            await self._turns.wait_current(HANDOVER_GRACE_S)
        await self._turns.stop()

    async def _finished(self, item: Item, cancelled: bool) -> None:
        if cancelled and self._handing_over:
            return
        self.acker.ack(item[0])

    async def _process(self, item: Item) -> None:
        _, entry = item
        with structlog.contextvars.bound_contextvars(session_id=self.sid):
            if entry.kind in USER_INPUTS:
                await append_history(self.r, self.sid, HistoryKind.USER, entry.turn,
                                     {"role": "user", "content": entry.content})
            if entry.kind == InputKind.CANCEL:
                return
            if self._turns.pending() or is_fenced(entry.turn, await fence_of(self.r, self.sid)):
                log.info("input superseded before its turn started", turn=entry.turn)
                return
            log.info("turn started", turn=entry.turn, kind=entry.kind.value)
            await Turn(self.r, self.settings, self.agent, self.sid, entry).run()
