"""The guardrails rule: a case-insensitive deny-list matched on word boundaries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Used when GUARDRAILS_DENY is empty; documented in services/guardrails/README.md.
DEFAULT_DENY: tuple[str, ...] = ("idiot", "stupid", "moron", "dumb", "shut up")


@dataclass(frozen=True)
class Violation:
    rule: str
    match: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "match": self.match}


class DenyList:
    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(w.strip().lower() for w in words if w.strip())
        self._patterns = [(w, re.compile(_word_pattern(w), re.IGNORECASE)) for w in self.words]

    def check(self, text: str) -> Violation | None:
        for word, pattern in self._patterns:
            if pattern.search(text):
                return Violation("deny-list", word)
        return None


def _word_pattern(word: str) -> str:
    # Lookarounds instead of \b so entries that start or end with punctuation still work,
    # and any run of whitespace matches the spaces in multi-word entries ("shut  up").
    body = r"\s+".join(re.escape(part) for part in word.split())
    return rf"(?<!\w){body}(?!\w)"


def deny_list(configured: Sequence[str]) -> DenyList:
    return DenyList(configured or DEFAULT_DENY)


def last_user_text(body: Any) -> str | None:
    """The content of the last user message in an agent request body, if there is one."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None
