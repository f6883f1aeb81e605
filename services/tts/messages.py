"""Parsing the client's JSON commands."""

from __future__ import annotations

import json
from dataclasses import dataclass

DONE = json.dumps({"action": "done"})


@dataclass(frozen=True)
class Synthesize:
    text: str


@dataclass(frozen=True)
class Cancel:
    pass


Command = Synthesize | Cancel


def parse_command(raw: str) -> Command:
    """The command in a text frame; ValueError saying what is wrong otherwise."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg}") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    action = message.get("action")
    if action == "cancel":
        return Cancel()
    if action == "synthesize":
        text = message.get("text")
        if not isinstance(text, str):
            raise ValueError("synthesize without a string 'text'")
        return Synthesize(text)
    raise ValueError(f"unknown action {action!r}")
