"""One agent turn: call the agent, turn its events into replies, always close the turn."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from agent_bridge.agent_client import AgentClient, AgentUnavailable
from agent_bridge.outbox import Outbox, TurnFenced
from shared import latency, topology
from shared.config import Settings
from shared.history import (
    HistoryKind,
    agent_context,
    history_kept,
    queue_append_history,
    queue_context,
    queue_store_agent_session,
)
from shared.latency import Step
from shared.messages import (
    AGENT_ERROR_REPLY,
    GUARDRAILS_REFUSAL,
    SLOW_AGENT_NOTICE,
    AgentInput,
    Modality,
    Signal,
    User,
    signal,
    widget_content,
)
from shared.protocols import REPLY_NODES, AgentField, AgentNode
from shared.redis_io import TRANSIENT, Backoff
from shared.turns import TURN_FENCED, mark_turn_started

log = structlog.get_logger(__name__)

TURNS = Counter("xrx_agent_turns_total", "Agent turns by outcome", ["outcome"])
FIRST_OUTPUT = Histogram("xrx_agent_first_output_seconds", "Agent call to first output")
# How long a turn keeps trying again while Redis is away (a failover takes a few seconds).
REDO_WINDOW_S = 15.0



class Turn:
    def __init__(self, r: Redis, settings: Settings, agent: AgentClient, sid: str,
                 entry: AgentInput, started_ms: int, history: list[dict[str, Any]],
                 session: dict[str, Any]) -> None:
        self.r, self.settings, self.agent, self.sid, self.entry = r, settings, agent, sid, entry
        self.history, self.session = history, session
        self.out = Outbox(r, sid, entry.turn, entry.modality, entry.voice_end_ms)
        self.out.started_ms = started_ms
        self.task_id = ""
        self._produced = asyncio.Event()
        # Written when the turn closes, in the same round trip: the agent's latest session
        # dict, and (a turn that completed) its messages for the history. The next turn of
        # the session reads both, and it starts only after this one has closed.
        self._agent_session: dict[str, Any] | None = None
        self._reply_history: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, r: Redis, settings: Settings, agent: AgentClient, sid: str,
                    entry: AgentInput, *, user_said: bool) -> Turn | None:
        """Start the input's turn, or None when it is fenced (a newer input superseded it).

        One round trip: the user's words join the history (``user_said``; whether or not
        their turn runs), the turn's start is recorded unless it is fenced (input begun
        before it waits behind it, voice begun after it barges in), the client is told, and
        what the agent is sent is read."""
        async with r.pipeline(transaction=False) as p:
            if user_said:
                queue_append_history(p, sid, HistoryKind.USER, entry.turn,
                                     {"role": "user", "content": entry.content},
                                     keep=history_kept(settings.MAX_AGENT_MESSAGES))
            mark_turn_started(p, sid, entry.turn)
            topology.reply(p, signal(sid, entry.turn, Signal.STARTED_THINKING))
            queue_context(p, sid, settings.MAX_AGENT_MESSAGES)
            *_, started_ms, _, raw_history, raw_session = await p.execute()
        if int(started_ms) == TURN_FENCED:
            # The gateway drops the start of a turn below the fence it knows; one it let
            # through (its fence not yet raised) must end for the client.
            await topology.reply(r, signal(sid, entry.turn, Signal.ENDED_THINKING))
            return None
        history, session = agent_context(sid, raw_history, raw_session)
        return cls(r, settings, agent, sid, entry, int(started_ms), history, session)

    async def run(self) -> None:
        """Run to completion; cancellation (a newer input, barge-in) aborts the agent call."""
        outcome = "completed"
        watchdog = asyncio.create_task(self._slow_notice())
        try:
            await self._call_agent_while_redis_holds(self.history, self.session)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except TurnFenced:
            outcome = "fenced"
        except AgentUnavailable as err:
            outcome = "agent_error"
            log.warning("agent call failed", error=str(err), turn=self.entry.turn)
            await self._say_unless_fenced(AGENT_ERROR_REPLY)
        finally:
            watchdog.cancel()
            if outcome in ("cancelled", "fenced"):
                await asyncio.shield(self._abandon())
            await asyncio.shield(self._close_turn())
            TURNS.labels(outcome).inc()

    async def _close_turn(self) -> None:
        async with self.r.pipeline(transaction=False) as p:
            if self._agent_session is not None:
                queue_store_agent_session(p, self.sid, self._agent_session)
            queue_append_history(p, self.sid, HistoryKind.REPLY, self.entry.turn,
                                 *self._reply_history,
                                 keep=history_kept(self.settings.MAX_AGENT_MESSAGES))
            topology.reply(p, signal(self.sid, self.entry.turn, Signal.ENDED_THINKING))
            await p.execute()

    async def _abandon(self) -> None:
        await self.agent.cancel(self.task_id)
        if self.entry.modality == Modality.AUDIO:
            await self.out.cancel_speech()
        await self.out.direct(signal(self.sid, 0, Signal.CLEAR_AUDIO_BUFFER, User.SYSTEM))

    async def _call_agent_while_redis_holds(self, history: list[dict[str, Any]],
                                            session: dict[str, Any]) -> None:
        """Redis lost mid-turn (a restart, a Sentinel failover): once it is back, run the turn
        again instead of ending it unanswered. The outputs are numbered per turn, so the
        gateway drops the ones the client already has; the history takes them once."""
        backoff = Backoff()
        deadline = time.monotonic() + REDO_WINDOW_S
        while True:
            try:
                await self._call_agent(history, session)
                return
            except TRANSIENT as err:
                if time.monotonic() > deadline:
                    raise
                log.warning("redis lost mid-turn, running the turn again", turn=self.entry.turn,
                            error=str(err))
                await backoff.sleep()
                started_ms = self.out.started_ms
                self.out = Outbox(self.r, self.sid, self.entry.turn, self.entry.modality)
                self.out.started_ms = started_ms

    async def _call_agent(self, history: list[dict[str, Any]], session: dict[str, Any]) -> None:
        new_messages: list[dict[str, Any]] = []
        spoken: list[str] = []
        started = time.monotonic()
        async with self.agent.run(history, session, self.entry.action) as stream:
            self.task_id = stream.task_id
            async for event in stream.events():
                if not self._produced.is_set():
                    FIRST_OUTPUT.observe(time.monotonic() - started)
                    latency.observe(Step.AGENT_FIRST_OUTPUT, self.entry.voice_end_ms,
                                    session_id=self.sid, turn=self.entry.turn)
                self._produced.set()
                if isinstance(event.get(AgentField.SESSION), dict):
                    self._agent_session = event[AgentField.SESSION]
                if isinstance(event.get(AgentField.MESSAGES), list):
                    new_messages = event[AgentField.MESSAGES]
                if AgentField.GUARDRAILS in event:
                    log.info("guardrails refused the input", rules=event[AgentField.GUARDRAILS])
                    await self.out.say(GUARDRAILS_REFUSAL, agent_output=False)
                    return
                if AgentField.ERROR in event:
                    raise AgentUnavailable(f"agent reported an error: {event[AgentField.ERROR]}")
                node, output = event.get(AgentField.NODE), event.get(AgentField.OUTPUT)
                if node in REPLY_NODES and output:
                    await self.out.say(str(output))
                    spoken.append(str(output))
                elif node == AgentNode.WIDGET and output:
                    # Forwarded as the agent sent it (the original does): xRx apps read
                    # content.type and JSON.parse(content.details).
                    await self.out.widget(widget_content(output))
        if not new_messages and spoken:
            new_messages = [{"role": "assistant", "content": " ".join(spoken)}]
        self._reply_history = new_messages

    async def _slow_notice(self) -> None:
        delay = self.settings.AGENT_SLOW_NOTICE_MS / 1000
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(self._produced.wait(), timeout=delay)
        except TimeoutError:
            await self._say_unless_fenced(SLOW_AGENT_NOTICE)

    async def _say_unless_fenced(self, text: str) -> None:
        try:
            await self.out.say(text, agent_output=False)
        except TurnFenced:
            pass
