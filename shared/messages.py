"""Message schemas: what clients send, what they receive, and every stream entry in between.

Stream entries are dataclasses; their attribute names are the stream field names, so a field
is named exactly once. ``encode`` / ``decode`` turn them into Redis stream fields and back.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
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
    INFO = "info"  # an extension: the service is available again after an outage
    # Extensions, only for clients that ask for session ids (gateway/resume.py):
    SESSION = "session"  # at connect: the session id, whether it was resumed
    AUDIO_ID = "audio_id"  # the id of the binary audio frame that follows


# The extra field that carries a reply's id to clients that ask for ids (its stream id).
REPLY_ID = "id"


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


def client_message(user: str, content: Any, type_: str, **extra: Any) -> str:
    """One xRx JSON text frame: ``{"user","content","type"}``. ``content`` is a string, except
    a widget's, which is whatever JSON value the agent sent (xRx apps read ``content.type``).
    ``extra`` fields (a reply's id) go only to clients that asked for them."""
    return json.dumps({"user": user, "content": content, "type": type_, **extra})


def widget_content(output: Any) -> str:
    """The ``content`` of a widget stream entry: the agent's Widget ``output`` as JSON text.
    Stream fields are strings; carrying the JSON lets ``Reply.to_client`` hand the client the
    value exactly as the agent sent it (an object stays an object, a string a string)."""
    return json.dumps(output, separators=(",", ":"))


# --- the xRx wire: client -> server --------------------------------------------------------


class FrameError(ValueError):
    """A client frame that cannot be accepted; the message is shown to the client."""


class InputKind(StrEnum):
    TEXT = "text"
    ACTION = "action"
    TRANSCRIPT = "transcript"
    CANCEL = "cancel"  # kill the turn in flight without starting a new one (older VADs' barge-in)
    # The user's voice began (voice_start_ms) and lasted BARGE_IN_MIN_MS: barge-in if the
    # agent is thinking about or speaking a turn that started before it.
    VOICE = "voice"
    CLOSE = "close"  # the session ended


@dataclasses.dataclass(frozen=True)
class ClientInput:
    kind: InputKind
    content: str = ""
    action: dict[str, Any] | None = None
    modality: Modality = Modality.TEXT


# Deeper JSON is never a legitimate xRx frame; the cap keeps hostile nesting from reaching
# the recursive encoders downstream (stream entries, the agent's request body).
MAX_JSON_DEPTH = 32


def parse_client_frame(raw: str) -> ClientInput:
    """Validate one client text frame; raise FrameError saying what was wrong.

    A frame that does not start with ``{`` or ``[`` (after whitespace) is not JSON at all: it is
    taken as typed text, since the xRx React client's ``sendMessage(text)`` sends its argument
    unchanged (an extension; the original threw on it).
    """
    if not raw.lstrip().startswith(("{", "[")):
        if not raw.strip():
            raise FrameError("empty message: send text or a JSON object with a 'type' field")
        _check_strings(raw)
        return ClientInput(InputKind.TEXT, content=raw)
    msg = _loads(raw, "invalid JSON")
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
        params = (_loads(params, "'content.parameters' is not valid JSON") if params.strip()
                  else {})
    if not isinstance(params, dict):
        raise FrameError("'content.parameters' must encode a JSON object")
    return tool_action(tool, params)


def _loads(text: str, what: str) -> Any:
    """``json.loads`` that fails only with FrameError: bad syntax, NaN/Infinity, integers past
    Python's 4,300-digit limit (a ValueError), floats out of range (``1e999``), nesting past
    the C parser's recursion limit or ``MAX_JSON_DEPTH``, lone UTF-16 surrogates
    (``"\\ud800"`` decodes to a string that cannot be encoded to UTF-8 for Redis)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise FrameError(f"{what}: {err.msg} at position {err.pos}") from None
    except RecursionError:
        raise FrameError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # the integer digit limit, NaN/Infinity
        raise FrameError(f"{what}: {err}") from None
    _check_value(value, what)
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """``1e999`` parses to infinity, which no JSON encoder downstream (the agent's request
    body) will write back: refused here, like ``Infinity``."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_value(value: Any, what: str) -> None:
    """Depth and surrogate check, iterative so it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_strings(item)
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise FrameError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _check_strings(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise FrameError("text contains a lone UTF-16 surrogate (not valid Unicode)") from None


# --- stream entries ------------------------------------------------------------------------

E = TypeVar("E", bound="Entry")
# name, stream field, parser, default
_Field = tuple[str, bytes, Callable[[bytes], Any], Any]


class Entry:
    """Base for stream entries: dataclass attributes map one-to-one to stream fields.

    Every entry names its session (``session_id``): a stage's input streams are shared by
    the sessions of one partition. Each class's codec is built once, on first use: decoding
    is on the path of every audio frame, and resolving type hints per entry cost more than
    everything else a worker did per frame.
    """

    _codec: ClassVar[tuple[_Field, ...]]

    def encode(self) -> dict[FieldT, EncodableT]:
        """Fields at their default are left out (decoding restores them): most entries set
        only a few, and every byte is written, replicated and read again."""
        out: dict[FieldT, EncodableT] = {}
        for name, _, _, default in self._fields():
            value = getattr(self, name)
            if value == default:
                continue
            if isinstance(value, bytes | str):
                out[name] = value
            elif isinstance(value, bool):
                out[name] = int(value)
            elif isinstance(value, int):
                out[name] = value
            else:
                out[name] = json.dumps(value)
        return out

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Self:
        kwargs: dict[str, Any] = {}
        for name, key, parse, _ in cls._fields():
            raw = fields.get(key)
            if raw is not None:
                kwargs[name] = parse(raw)
        return cls(**kwargs)

    @classmethod
    def _fields(cls) -> tuple[_Field, ...]:
        codec = cls.__dict__.get("_codec")
        if codec is None:
            hints = typing.get_type_hints(cls)
            codec = tuple((f.name, f.name.encode(), _parser(hints[f.name]), f.default)
                          for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._codec = codec
        return codec


def session_of(fields: dict[bytes, bytes]) -> str:
    """The session an encoded entry belongs to, without decoding the rest."""
    return fields.get(SESSION_FIELD, b"").decode()


def _parser(hint: Any) -> Callable[[bytes], Any]:
    if hint is bytes:
        return bytes
    if hint is bool:
        return lambda raw: raw not in (b"0", b"")
    if hint is int:
        return int
    if hint is float:
        return float
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return lambda raw: hint(raw.decode())
    if hint is str:
        return bytes.decode
    return json.loads


SESSION_FIELD = b"session_id"


@dataclasses.dataclass
class AgentInput(Entry):
    """One input for the agent bridge, in the session's order."""

    session_id: str = ""
    kind: InputKind = InputKind.TEXT
    turn: int = 0
    content: str = ""
    action: dict[str, Any] | None = None
    modality: Modality = Modality.TEXT
    # A spoken turn: wall clock (ms) when the user's voice stopped, for the latency breakdown.
    voice_end_ms: int = 0
    # A VOICE entry: when the user's voice began (Redis's clock, ms; 0: unknown).
    voice_start_ms: int = 0
    # Turns below this are dead from here on (shared/turns.py): this input superseded them,
    # or a barge-in cut them. The agent bridge cancels its turn in flight if it is one of
    # them; 0: this input cuts nothing and waits its turn.
    fence: int = 0


@dataclasses.dataclass
class AudioIn(Entry):
    """Client microphone PCM (s16le, 16 kHz, mono) for the VAD stage; ``close`` ends it.

    The gateway writes audio as :func:`audio_batch` entries (every session of one partition
    in one entry); a stage worker hands each session its part as an ``AudioIn``."""

    session_id: str = ""
    pcm: bytes = b""
    close: bool = False


# An audio batch entry has one field per session: this prefix and the session id -> its PCM.
# Per-entry costs (the XADD, the read, the acknowledgement, the decode) are paid once per
# partition per gateway write instead of once per session: at 500 sessions, 32 entries per
# write instead of 500.
AUDIO_BATCH_PREFIX = b"@"
_PCM_FIELD = b"pcm"


def audio_batch(frames: dict[str, bytes]) -> dict[FieldT, EncodableT]:
    """The fields of one entry carrying each session's audio (sessions of one partition)."""
    return {AUDIO_BATCH_PREFIX + sid.encode(): pcm for sid, pcm in frames.items()}


def entry_parts(fields: dict[bytes, bytes]) -> list[tuple[str, dict[bytes, bytes]]]:
    """An entry's per-session parts, ``(session id, fields)``: one part for an ordinary entry;
    for an :func:`audio_batch`, one ``AudioIn`` per session in it."""
    sid = fields.get(SESSION_FIELD)
    if sid is not None or not fields:
        return [((sid or b"").decode(), fields)]
    parts = []
    for key, pcm in fields.items():
        if key.startswith(AUDIO_BATCH_PREFIX):
            part_sid = key[len(AUDIO_BATCH_PREFIX):]
            parts.append((part_sid.decode(), {SESSION_FIELD: part_sid, _PCM_FIELD: pcm}))
    return parts


class SpeechKind(StrEnum):
    UTTERANCE = "utterance"  # a finished utterance's audio; the voice stopped at voice_end_ms
    STREAM = "stream"  # raw audio for a streaming STT provider
    SPEAKING = "speaking"  # the user started talking
    QUIET = "quiet"  # the user stopped talking at ``voice_end_ms`` and nothing was said
    # A tentative end: the utterance so far, as it will be sent if the silence lasts
    # STT_WAIT_MS (same start_ms and end_ms); STT may start on it.
    TENTATIVE = "tentative"
    CLOSE = "close"


@dataclasses.dataclass
class UtteranceIn(Entry):
    """What the VAD tells the STT stage, in the session's order: utterances, raw audio for a
    streaming provider, and when the user starts and stops talking (AGENT_WAIT_MS holds a
    transcript while the user goes on talking)."""

    session_id: str = ""
    kind: SpeechKind = SpeechKind.UTTERANCE
    pcm: bytes = b""
    start_ms: int = 0
    end_ms: int = 0
    voice_end_ms: int = 0  # wall clock (ms) when the voice stopped
    # Wall clock (Redis's, ms) when the voice of an utterance began: whether its transcript
    # may cut the turn in flight short (shared/turns.py). 0: unknown.
    voice_start_ms: int = 0


class SpeakKind(StrEnum):
    SPEAK = "speak"
    CANCEL = "cancel"
    VOICE = "voice"  # as InputKind.VOICE
    CLOSE = "close"


@dataclasses.dataclass
class SpeakIn(Entry):
    """A reply for the TTS stage to speak, or a cancel of what it is speaking."""

    session_id: str = ""
    kind: SpeakKind = SpeakKind.SPEAK
    turn: int = 0
    text: str = ""
    # A message to release to the client once everything before it was spoken
    # (the original holds agent replies while TTS is streaming).
    user: str = ""
    type: str = ""
    content: str = ""
    seq: int = 0
    voice_end_ms: int = 0  # the first reply of a spoken turn: as AgentInput.voice_end_ms
    voice_start_ms: int = 0  # a VOICE entry: as AgentInput.voice_start_ms
    turn_started_ms: int = 0  # a reply: when its turn started (Redis's clock, ms; 0: unknown)


@dataclasses.dataclass
class Reply(Entry):
    """One message for the client. ``turn`` 0 is session-level and never fenced."""

    session_id: str = ""
    turn: int = 0
    user: str = ""
    type: str = ""
    content: str = ""
    pcm: bytes = b""
    # The n-th output of the agent in this turn (0: not numbered). A turn run again after a
    # failover numbers its outputs the same way, so the gateway drops what it already sent.
    seq: int = 0
    # The n-th audio chunk of the output numbered ``seq`` (0: not numbered).
    chunk: int = 0
    # Turns below this are dead from here on (a barge-in, a new turn elsewhere): the gateway
    # learns fences in reply order instead of reading them from Redis.
    fence: int = 0

    @property
    def is_audio(self) -> bool:
        return bool(self.pcm)

    def to_client(self, **extra: Any) -> str:
        content: Any = self.content
        if self.type == MsgType.WIDGET:
            try:
                content = json.loads(self.content)  # written by widget_content
            except ValueError:
                pass  # not JSON: forwarded as the string it is
        return client_message(self.user, content, self.type, **extra)


def signal(sid: str, turn: int, sig: Signal, user: User = User.AGENT) -> Reply:
    return Reply(session_id=sid, turn=turn, user=user, type=MsgType.ACTION, content=sig)


def error_reply(sid: str, message: str) -> Reply:
    return Reply(session_id=sid, turn=0, user=User.SYSTEM, type=MsgType.ERROR, content=message)
