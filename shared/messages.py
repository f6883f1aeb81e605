"""Message schemas: what clients send, what they receive, and every stream entry in between.

Stream entries are dataclasses; their attribute names are the stream field names, so a field
is named exactly once. ``encode`` / ``decode`` turn them into Redis stream fields and back.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from redis.typing import EncodableT, FieldT

from shared.protocols import tool_action

# --- the xRx wire: server -> client --------------------------------------------------------


class User(StrEnum):
    AGENT = "agent"
    USER = "user"
    SYSTEM = "system"


class MsgType(StrEnum):
    TEXT = "text"
    AUDIO = "audio"
    WIDGET = "widget"
    ACTION = "action"
    ERROR = "error"


class Signal(StrEnum):
    """Control signals sent as ``type: "action"`` messages."""

    STARTED_THINKING = "agent_started_thinking"
    ENDED_THINKING = "agent_ended_thinking"
    CLEAR_AUDIO_BUFFER = "clear_audio_buffer"
    AUDIO_GENERATION_DONE = "audio_generation_done"


class Modality(StrEnum):
    TEXT = "text"
    AUDIO = "audio"


# The original's user-facing texts, kept word for word for client compatibility.
SLOW_AGENT_NOTICE = "One moment please..."
GUARDRAILS_REFUSAL = "Sorry I am not going to respond to that. Try again but a bit nicer."
AGENT_ERROR_REPLY = "Sorry I had some trouble with that. Can you please repeat what you said?"
STT_DOWN_REPLY = "Sorry, I can't hear you right now: speech recognition is unavailable."
TTS_DOWN_REPLY = "Sorry, I can't speak right now: speech synthesis is unavailable."


def client_message(user: str, content: str, type_: str) -> str:
    """One xRx JSON text frame: ``{"user","content","type"}``."""
    return json.dumps({"user": user, "content": content, "type": type_})


# --- the xRx wire: client -> server --------------------------------------------------------


class FrameError(ValueError):
    """A client frame that cannot be accepted; the message is shown to the client."""


class InputKind(StrEnum):
    TEXT = "text"
    ACTION = "action"
    TRANSCRIPT = "transcript"
    CANCEL = "cancel"  # barge-in: kill the turn in flight without starting a new one
    CLOSE = "close"  # the session ended


@dataclasses.dataclass(frozen=True)
class ClientInput:
    kind: InputKind
    content: str = ""
    action: dict[str, Any] | None = None
    modality: Modality = Modality.TEXT


def parse_client_frame(raw: str) -> ClientInput:
    """Validate one client text frame; raise FrameError saying what was wrong."""
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as err:
        raise FrameError(f"invalid JSON: {err.msg} at position {err.pos}") from None
    if not isinstance(msg, dict):
        raise FrameError("a message must be a JSON object with a 'type' field")
    kind = msg.get("type")
    if kind is None:
        raise FrameError("missing 'type': expected 'text' or 'action'")
    modality = _modality(msg.get("modality", Modality.TEXT.value))
    if kind == InputKind.TEXT:
        content = msg.get("content")
        if not isinstance(content, str):
            raise FrameError("'content' of a text message must be a string")
        if not content.strip():
            raise FrameError("'content' of a text message must not be empty")
        return ClientInput(InputKind.TEXT, content=content, modality=modality)
    if kind == InputKind.ACTION:
        return ClientInput(InputKind.ACTION, action=_parse_action(msg.get("content")),
                           modality=modality)
    raise FrameError(f"unknown type {kind!r}: expected 'text' or 'action'")


def check_audio_frame(data: bytes) -> None:
    """A binary client frame must be whole s16le samples."""
    if not data:
        raise FrameError("empty binary frame: expected 16-bit PCM samples")
    if len(data) % 2:
        raise FrameError(
            f"binary frame of {len(data)} bytes is not whole 16-bit samples (odd length)")


def _modality(value: object) -> Modality:
    try:
        return Modality(str(value))
    except ValueError:
        raise FrameError(f"unknown modality {value!r}: expected 'text' or 'audio'") from None


def _parse_action(content: object) -> dict[str, Any]:
    """Build the agent's ``action`` from ``{"tool", "parameters": "<JSON string>"}``."""
    if not isinstance(content, dict):
        raise FrameError("'content' of an action must be an object with 'tool' and 'parameters'")
    tool = content.get("tool")
    if not isinstance(tool, str) or not tool:
        raise FrameError("'content.tool' of an action must be a non-empty string")
    params: object = content.get("parameters", {})
    if isinstance(params, str):
        # xRx clients send parameters JSON-encoded; the orchestrator parses them.
        try:
            params = json.loads(params) if params.strip() else {}
        except json.JSONDecodeError as err:
            raise FrameError(f"'content.parameters' is not valid JSON: {err.msg}") from None
    if not isinstance(params, dict):
        raise FrameError("'content.parameters' must encode a JSON object")
    return tool_action(tool, params)


# --- stream entries ------------------------------------------------------------------------

E = TypeVar("E", bound="Entry")


class Entry:
    """Base for stream entries: dataclass attributes map one-to-one to stream fields."""

    _hints: ClassVar[dict[str, Any]]

    def encode(self) -> dict[FieldT, EncodableT]:
        out: dict[FieldT, EncodableT] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, bytes | str):
                out[f.name] = value
            elif isinstance(value, bool):
                out[f.name] = int(value)
            elif isinstance(value, int):
                out[f.name] = value
            else:
                out[f.name] = json.dumps(value)
        return out

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Self:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            raw = fields.get(f.name.encode())
            if raw is None:
                continue
            kwargs[f.name] = _decode_value(hints[f.name], raw)
        return cls(**kwargs)


def _decode_value(hint: Any, raw: bytes) -> Any:
    if hint is bytes:
        return raw
    if hint is bool:
        return raw not in (b"0", b"")
    if hint is int:
        return int(raw)
    if hint is float:
        return float(raw)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return hint(raw.decode())
    if hint is str:
        return raw.decode()
    return json.loads(raw)


@dataclasses.dataclass
class OwnershipClaim(Entry):
    """Offers a session to a stage; the replica that reads it owns the session."""

    session_id: str = ""


@dataclasses.dataclass
class AgentInput(Entry):
    """One input for the agent bridge, in the session's order."""

    kind: InputKind = InputKind.TEXT
    turn: int = 0
    content: str = ""
    action: dict[str, Any] | None = None
    modality: Modality = Modality.TEXT


@dataclasses.dataclass
class AudioIn(Entry):
    """Client microphone PCM (s16le, 16 kHz, mono) for the VAD stage; ``close`` ends it."""

    pcm: bytes = b""
    close: bool = False


@dataclasses.dataclass
class UtteranceIn(Entry):
    """A finished utterance for the STT stage; with ``streaming``, a raw audio frame for a
    streaming STT provider."""

    pcm: bytes = b""
    start_ms: int = 0
    end_ms: int = 0
    close: bool = False
    streaming: bool = False
    seq: int = 0  # the session's utterance number (RECORD_UTTERANCES once it was sent)


class SpeakKind(StrEnum):
    SPEAK = "speak"
    CANCEL = "cancel"
    CLOSE = "close"


@dataclasses.dataclass
class SpeakIn(Entry):
    """A reply for the TTS stage to speak, or a cancel of what it is speaking."""

    kind: SpeakKind = SpeakKind.SPEAK
    turn: int = 0
    text: str = ""
    # A message to release to the client once everything before it was spoken
    # (the original holds agent replies while TTS is streaming).
    user: str = ""
    type: str = ""
    content: str = ""
    seq: int = 0


@dataclasses.dataclass
class Reply(Entry):
    """One message for the client. ``turn`` 0 is session-level and never fenced."""

    turn: int = 0
    user: str = ""
    type: str = ""
    content: str = ""
    pcm: bytes = b""
    # The n-th output of the agent in this turn (0: not numbered). A turn run again after a
    # failover numbers its outputs the same way, so the gateway drops what it already sent.
    seq: int = 0

    @property
    def is_audio(self) -> bool:
        return bool(self.pcm)

    def to_client(self) -> str:
        return client_message(self.user, self.content, self.type)


def signal(turn: int, sig: Signal, user: User = User.AGENT) -> Reply:
    return Reply(turn=turn, user=user, type=MsgType.ACTION, content=sig)


def error_reply(message: str) -> Reply:
    return Reply(turn=0, user=User.SYSTEM, type=MsgType.ERROR, content=message)
