"""The agent stage's per-session logic: turns in order; an input that superseded the turn in
flight (shared/turns.py: the user began it after that turn started) cancels it, one that was
begun before waits its turn."""

from __future__ import annotations

import time

import structlog
from redis.asyncio import Redis

from agent_bridge.agent_client import AgentClient
from agent_bridge.turn import REDO_WINDOW_S, Turn
from shared.barge_in import interrupt
from shared.config import Settings
from shared.messages import AgentInput, InputKind
from shared.ownership import Acker
from shared.redis_io import TRANSIENT, Backoff
from shared.stage_session import QueuedSession
from shared.turns import is_fenced

log = structlog.get_logger(__name__)

# How long a replica shutting down lets a running turn finish before handing it over.
HANDOVER_GRACE_S = 10.0

USER_INPUTS = frozenset({InputKind.TEXT, InputKind.TRANSCRIPT})

class AgentSession(QueuedSession[AgentInput]):
    entry_type = AgentInput
    handover_grace_s = HANDOVER_GRACE_S

    def __init__(self, r: Redis, settings: Settings, agent: AgentClient, sid: str,
                 acker: Acker) -> None:
        super().__init__(sid, acker)
        self.r, self.settings, self.agent = r, settings, agent
        self._running = 0  # the turn in flight, 0 when none

    def is_close(self, entry: AgentInput) -> bool:
        return entry.kind == InputKind.CLOSE

    async def act_now(self, entry_id: bytes, entry: AgentInput) -> bool:
        if entry.kind == InputKind.VOICE:
            await self._voice(entry)
            self.acker.ack(entry_id)
            return True
        # The turn in flight stops only when this input fenced it: the user began the input
        # after the turn started (the original's "a newer input supersedes"), or barged in.
        # Input begun before it (a backlog after a stalled worker) queues behind it.
        if is_fenced(self._running, cancelling_fence(entry)):
            self.queue.cancel_current()
        return False

    async def _voice(self, entry: AgentInput) -> None:
        """The user is talking (shared/barge_in.py): thinking about a turn that started
        before the voice, stop."""
        if self._running:
            kill = await interrupt(self.r, self.sid, entry.voice_start_ms)
            if kill is not None and is_fenced(self._running, kill.fence):
                self.queue.cancel_current()

    async def process(self, entry: AgentInput) -> None:
        # Redis lost before or after the agent call (a restart, a Sentinel failover): do the
        # input again once it is back rather than acknowledge it undone. Every step is
        # idempotent (history appends once per turn, outputs are numbered per turn).
        backoff, deadline = Backoff(), time.monotonic() + REDO_WINDOW_S
        while True:
            try:
                return await self._process(entry)
            except TRANSIENT as err:
                if time.monotonic() > deadline:
                    raise
                log.warning("redis lost, handling the input again", turn=entry.turn,
                            error=str(err))
                await backoff.sleep()

    async def _process(self, entry: AgentInput) -> None:
        if entry.kind == InputKind.CANCEL:
            return
        self._running = entry.turn  # voice from now on may cut it (shared/barge_in.py)
        try:
            turn = await Turn.start(self.r, self.settings, self.agent, self.sid, entry,
                                    user_said=entry.kind in USER_INPUTS)
            if turn is None:
                log.info("input superseded before its turn started", turn=entry.turn)
                return
            log.info("turn started", turn=entry.turn, kind=entry.kind.value)
            await turn.run()
        finally:
            self._running = 0


def cancelling_fence(entry: AgentInput) -> int:
    """The fence an input brings: its own when it superseded, a barge-in's; a barge-in entry
    from before inputs carried fences cancels the turn it names and earlier ones."""
    if entry.fence or entry.kind != InputKind.CANCEL:
        return entry.fence
    return entry.turn + 1
