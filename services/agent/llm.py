"""Streaming replies from any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
Ollama): server-sent ``data: {...choices[0].delta...}`` events up to ``data: [DONE]``.

Sentences are yielded as soon as they are complete, so speech can start before the model
has finished. The model may call the tools in :data:`TOOLS`; each call becomes a widget
(xRx convention ``{"type": <widget>, "details": ...}``), yielded when the stream ends. A
cancelled turn closes the response, which aborts the request upstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog

from services.agent import order, script
from services.agent.menu import MENU, money
from services.cloud import describe_status
from shared.config import Settings

log = structlog.get_logger(__name__)

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace, or at a
# newline; requiring the whitespace keeps "$12.50" in one piece.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"')\]]*\s+|\n+")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_OPEN = "<think>"


Widget = dict[str, Any]

# What the model may show on the customer's screen; the agent fills in the contents.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "show_menu", "description": "Show the menu with prices on the customer's screen.",
        "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {
        "name": "show_order",
        "description": "Show the customer's current order and total on their screen.",
        "parameters": {"type": "object", "properties": {}}}},
]


class LLMError(Exception):
    """The model endpoint failed or answered something other than a chat stream."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def tool_widget(name: str, arguments: str, session: dict[str, Any]) -> Widget:
    """The widget a tool call shows: the demo's own for its tools, otherwise the call itself
    in the xRx form, its arguments as the JSON string ``details``."""
    if name == "show_menu":
        return script.menu_widget()
    if name == "show_order":
        return order.summary_widget(session)
    return {"type": name, "details": arguments or "{}"}


class ToolCalls:
    """Tool calls assembled from their streamed fragments (name first, arguments in pieces)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def feed(self, deltas: object) -> None:
        if not isinstance(deltas, list):
            return
        for d in deltas:
            if not isinstance(d, dict):
                continue
            call = self._calls.setdefault(int(d.get("index", len(self._calls))),
                                          {"name": "", "arguments": ""})
            function = d.get("function") or {}
            if isinstance(function, dict):
                call["name"] += str(function.get("name") or "")
                call["arguments"] += str(function.get("arguments") or "")

    def widgets(self, session: dict[str, Any]) -> list[Widget]:
        return [tool_widget(c["name"], c["arguments"], session)
                for _, c in sorted(self._calls.items()) if c["name"]]


class SentenceSplitter:
    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            m = _BOUNDARY.search(self._buf)
            if m is None:
                return out
            sentence = self._buf[: m.end()].strip()
            self._buf = self._buf[m.end() :]
            if sentence:
                out.append(sentence)

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []


class ThinkFilter:
    """Drops ``<think>...</think>`` blocks that reasoning models put before their answer."""

    def __init__(self) -> None:
        self._raw = ""
        self._sent = 0

    def _visible(self, final: bool) -> str:
        visible = _THINK.sub("", self._raw)
        cut = visible.find(_OPEN)
        if cut >= 0:
            return visible[:cut]
        if not final:
            # A tag may be split across chunks: hold back a tail that could start one.
            for k in range(min(len(_OPEN) - 1, len(visible)), 0, -1):
                if _OPEN.startswith(visible[-k:]):
                    return visible[:-k]
        return visible

    def feed(self, text: str, final: bool = False) -> str:
        self._raw += text
        visible = self._visible(final)
        new = visible[self._sent :]
        self._sent = max(self._sent, len(visible))
        return new


def system_prompt(session: dict[str, Any]) -> str:
    menu = "\n".join(
        f"- {p.name}: " + ", ".join(f"{s} {money(c)}" for s, c in p.cents.items()) for p in MENU
    )
    lines = order.items(session)
    total = money(order.total_cents(session))
    current = "; ".join(order.describe(i) for i in lines) + f" (total {total})"
    if not lines:
        current = "empty"
    return (
        "You are the voice assistant of Demo Pizza, a pizzeria taking orders by phone.\n"
        f"Menu:\n{menu}\n"
        f"The customer's current order: {current}.\n"
        "Answer in one to three short, friendly sentences of plain text: no lists, no markdown, "
        "no emoji, because your words are spoken aloud. You cannot change the order yourself; "
        "tell the customer to say for example 'add a large pepperoni', 'remove the pepperoni', "
        "'order summary' or 'checkout'. Politely steer off-topic requests back to pizza."
    )


def _delta(line: str) -> dict[str, Any] | None:
    """The ``delta`` carried by one SSE line (``{}`` for none), or None at the end."""
    if not line.startswith("data:"):
        return {}
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        log.warning("llm_bad_chunk", chunk=data[:200])
        return {}
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return {}
    delta = choices[0].get("delta") or {}
    return delta if isinstance(delta, dict) else {}


async def stream_sentences(
    client: httpx.AsyncClient,
    settings: Settings,
    history: list[dict[str, str]],
    session: dict[str, Any],
) -> AsyncIterator[str | Widget]:
    """Sentences (``str``) as they complete, then the widgets of the model's tool calls."""
    url = settings.LLM_BASE_URL.rstrip("/") + "/chat/completions"
    headers = {"Accept": "text/event-stream"}
    if settings.LLM_API_KEY:
        headers["Authorization"] = f"Bearer {settings.LLM_API_KEY}"
    payload = {
        "model": settings.LLM_MODEL,
        "stream": True,
        "messages": [{"role": "system", "content": system_prompt(session)}, *history],
        "tools": TOOLS,
    }
    splitter = SentenceSplitter()
    thoughts = ThinkFilter()
    calls = ToolCalls()
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:300].decode(errors="replace")
                raise LLMError(f"LLM: {describe_status(resp.status_code)}: {body}",
                               resp.status_code)
            async for line in resp.aiter_lines():
                delta = _delta(line)
                if delta is None:
                    break
                calls.feed(delta.get("tool_calls"))
                text = delta.get("content")
                for sentence in splitter.feed(thoughts.feed(text if isinstance(text, str)
                                                            else "")):
                    yield sentence
    except httpx.HTTPError as exc:
        raise LLMError(f"LLM request failed: {exc!r}") from exc
    for sentence in splitter.feed(thoughts.feed("", final=True)) + splitter.flush():
        yield sentence
    for widget in calls.widgets(session):
        yield widget
