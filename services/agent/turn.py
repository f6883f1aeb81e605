"""One agent turn: request body in, xRx events out."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import structlog
from pydantic import BaseModel, ConfigDict

from services.agent import hooks, llm, script, tools
from services.agent.script import Reply
from shared.config import Settings
from shared.protocols import AgentField, AgentNode

log = structlog.get_logger(__name__)

Event = dict[str, Any]

LLM_DOWN_NOTICE = "Sorry, my language model is unavailable right now, so I'll keep it simple."


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class Action(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    details: dict[str, Any] = {}


class TurnRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[Message]
    session: dict[str, Any] = {}
    action: Action | None = None


class Transcript:
    """The session and the reply spoken so far; every event carries both, so whichever
    event turns out to be the last one holds the turn's complete result."""

    def __init__(self, session: dict[str, Any]) -> None:
        self.session = copy.deepcopy(session)
        self._spoken: list[str] = []

    def _messages(self) -> list[dict[str, str]]:
        if not self._spoken:
            return []
        return [{"role": "assistant", "content": " ".join(self._spoken)}]

    def _event(self, node: str, output: str | dict[str, Any]) -> Event:
        return {
            AgentField.NODE: node,
            AgentField.OUTPUT: output,
            AgentField.SESSION: copy.deepcopy(self.session),
            AgentField.MESSAGES: self._messages(),
        }

    @property
    def spoken(self) -> bool:
        return bool(self._spoken)

    def say(self, text: str) -> Event:
        self._spoken.append(text)
        return self._event(AgentNode.CUSTOMER_RESPONSE, text)

    def widget(self, widget: dict[str, Any]) -> Event:
        return self._event(AgentNode.WIDGET, script.xrx_widget(widget))

    def reply(self, reply: Reply) -> Iterator[Event]:
        for sentence in reply.sentences:
            yield self.say(sentence)
        for widget in reply.widgets:
            yield self.widget(widget)


def _last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.content or ""
    return ""


def _llm_history(messages: list[Message], cleaned: str) -> list[dict[str, str]]:
    history = [
        {"role": m.role, "content": m.content or ""}
        for m in messages
        if m.role in ("user", "assistant")
    ]
    # The model should not see the test markers.
    for m in reversed(history):
        if m["role"] == "user":
            m["content"] = cleaned
            break
    return history


async def run_turn(
    req: TurnRequest, settings: Settings, client: httpx.AsyncClient
) -> AsyncIterator[Event]:
    out = Transcript(req.session)
    if req.action is not None:
        for event in out.reply(tools.handle_action(req.action.model_dump(), out.session)):
            yield event
        return

    h = hooks.parse(_last_user_text(req.messages))
    if h.delay_s > 0:
        await asyncio.sleep(h.delay_s)
    if h.fail:
        yield {"error": "demo failure"}
        return
    if h.parts is not None:
        for i in range(1, h.parts + 1):
            if i > 1:
                await asyncio.sleep(hooks.PART_INTERVAL_S)
            yield out.say(f"Part {i} of {h.parts}.")
        return

    text = h.text or "hello"
    if settings.LLM_BASE_URL and script.classify(text) in script.CONVERSATIONAL:
        shown = False
        try:
            async for item in llm.stream_sentences(
                client, settings, _llm_history(req.messages, text), out.session
            ):
                if isinstance(item, str):
                    yield out.say(item)
                else:
                    shown = True
                    yield out.widget(item)
            if out.spoken or shown:
                return
        except llm.LLMError as exc:
            if out.spoken:
                log.warning("llm_failed_midway", error=str(exc))
                yield {"error": "language model failed"}
                return
            # Nothing said yet: say plainly that the model is unavailable (a rejected key or
            # a quota needs someone to act), then answer from the script rather than not at all.
            log.warning("llm_unavailable_using_script", error=str(exc), status=exc.status)
            yield out.say(LLM_DOWN_NOTICE)

    for event in out.reply(script.respond(text, out.session)):
        yield event
