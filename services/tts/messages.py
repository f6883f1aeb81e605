"""Parsing the client's JSON commands."""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.protocols import TTS_ACTION, TTS_TEXT, TtsAction, tts_command

DONE = tts_command(TtsAction.DONE)


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
    action = message.get(TTS_ACTION)
    if action == TtsAction.CANCEL:
        return Cancel()
    if action == TtsAction.SYNTHESIZE:
        text = message.get(TTS_TEXT)
        if not isinstance(text, str):
            raise ValueError("synthesize without a string 'text'")
        return Synthesize(text)
    raise ValueError(f"unknown action {action!r}")
