"""Streaming replies from an OpenAI-compatible ``/chat/completions`` endpoint (e.g. Ollama).

Sentences are yielded as soon as they are complete, so speech can start before the model
has finished.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog

from services.agent import order
from services.agent.menu import MENU, money
from shared.config import Settings

log = structlog.get_logger(__name__)

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace, or at a
# newline; requiring the whitespace keeps "$12.50" in one piece.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"')\]]*\s+|\n+")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_OPEN = "<think>"


class LLMError(Exception):
    """The model endpoint failed or answered something other than a chat stream."""


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


def _delta(line: str) -> str | None:
    """The text carried by one SSE line, or None at the end of the stream."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        log.warning("llm_bad_chunk", chunk=data[:200])
        return ""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


async def stream_sentences(
    client: httpx.AsyncClient,
    settings: Settings,
    history: list[dict[str, str]],
    session: dict[str, Any],
) -> AsyncIterator[str]:
    url = settings.LLM_BASE_URL.rstrip("/") + "/chat/completions"
    headers = {"Accept": "text/event-stream"}
    if settings.LLM_API_KEY:
        headers["Authorization"] = f"Bearer {settings.LLM_API_KEY}"
    payload = {
        "model": settings.LLM_MODEL,
        "stream": True,
        "messages": [{"role": "system", "content": system_prompt(session)}, *history],
    }
    splitter = SentenceSplitter()
    thoughts = ThinkFilter()
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:300].decode(errors="replace")
                raise LLMError(f"LLM answered {resp.status_code}: {body}")
            async for line in resp.aiter_lines():
                text = _delta(line)
                if text is None:
                    break
                for sentence in splitter.feed(thoughts.feed(text)):
                    yield sentence
    except httpx.HTTPError as exc:
        raise LLMError(f"LLM request failed: {exc!r}") from exc
    for sentence in splitter.feed(thoughts.feed("", final=True)) + splitter.flush():
        yield sentence
