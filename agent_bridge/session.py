"""The agent stage's per-session logic: turns in order, a newer input cancels the current one."""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis

from agent_bridge.agent_client import AgentClient
from agent_bridge.turn import Turn
from shared.config import Settings
from shared.messages import AgentInput, InputKind
from shared.ownership import Acker, Fields
from shared.redis_io import append_history, fence_of, is_fenced

log = structlog.get_logger(__name__)

# How long a replica shutting down lets a running turn finish before handing it over.
HANDOVER_GRACE_S = 10.0

USER_INPUTS = frozenset({InputKind.TEXT, InputKind.TRANSCRIPT})


class AgentSession:
    def __init__(self, r: Redis, settings: Settings, agent: AgentClient, sid: str,
                 acker: Acker) -> None:
        self.r, self.settings, self.agent, self.sid, self.acker = r, settings, agent, sid, acker
        self._queue: asyncio.Queue[tuple[bytes, AgentInput]] = asyncio.Queue()
        self._current: asyncio.Task[None] | None = None
        self._runner = asyncio.create_task(self._run())

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = AgentInput.decode(fields)
        if entry.kind == InputKind.CLOSE:
            await self._stop()
            await self.acker.ack(entry_id, *self._drain())
            return True
        # Whatever comes next supersedes the turn in flight (the original's behaviour).
        self._cancel_current()
        self._queue.put_nowait((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        if handing_over and self._current is not None:
            # Let a running turn finish; unfinished inputs stay pending for the next owner.
            await asyncio.wait({self._current}, timeout=HANDOVER_GRACE_S)
        await self._stop()

    def _cancel_current(self) -> None:
        if self._current is not None and not self._current.done():
            self._current.cancel()

    async def _stop(self) -> None:
        self._cancel_current()
        self._runner.cancel()
        for task in (self._current, self._runner):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    def _drain(self) -> list[bytes]:
        ids = []
        while not self._queue.empty():
            ids.append(self._queue.get_nowait()[0])
        return ids

    async def _run(self) -> None:
        with_sid = structlog.contextvars.bound_contextvars(session_id=self.sid)
        with with_sid:
            while True:
                entry_id, entry = await self._queue.get()
                await self._process(entry)
                await self.acker.ack(entry_id)

    async def _process(self, entry: AgentInput) -> None:
        if entry.kind in USER_INPUTS:
            await append_history(self.r, self.sid, {"role": "user", "content": entry.content})
        if entry.kind == InputKind.CANCEL:
            return
        if entry.kind == InputKind.TRANSCRIPT and self.settings.AGENT_WAIT_MS:
            # The original waits AGENT_WAIT_MS after speech before calling the agent, so a
            # user who goes on talking supersedes this turn instead of interrupting a reply.
            await asyncio.sleep(self.settings.AGENT_WAIT_MS / 1000)
        superseded = not self._queue.empty() or is_fenced(entry.turn,
                                                          await fence_of(self.r, self.sid))
        if superseded:
            log.info("input superseded before its turn started", turn=entry.turn)
            return
        log.info("turn started", turn=entry.turn, kind=entry.kind.value)
        self._current = asyncio.create_task(
            Turn(self.r, self.settings, self.agent, self.sid, entry).run())
        try:
            await self._current
        except asyncio.CancelledError:
            if self._runner.cancelling():
                raise
            log.info("turn cancelled", turn=entry.turn)
        finally:
            self._current = None
