"""Load test of the xrx gateway over its xRx WebSocket, with locust.

    locust -f tests/load/locustfile.py --headless -u 50 -r 10 -t 1m --host ws://localhost:8000

``TextUser`` sends text turns and reports, per turn, the time from sending the message to
``agent_started_thinking``, to the first agent text and to ``agent_ended_thinking``.
``VoiceUser`` (only when ``XRX_LOAD_AUDIO`` names a 16 kHz mono s16le WAV or raw PCM file)
streams that speech in 30 ms frames at real-time pace and reports end of speech to the
transcript and to the first audio byte of the spoken answer.

Environment: ``API_KEY`` (default 123456), ``XRX_LOAD_TURNS`` (turns per user, default 20),
``XRX_LOAD_TURN_TIMEOUT_S`` (default 30), ``XRX_LOAD_AUDIO``. Only loopback hosts are accepted:
this is a tool for a system you run yourself, not for somebody else's server.
"""

from __future__ import annotations

import array
import inspect
import ipaddress
import json
import math
import os
import socket
import sys
import time
import wave
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import User, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

WS_PATH = "/api/v1/ws"
PROMPTS = ("What is on the menu?", "I'd like a large pepperoni", "what's my order")
STARTED, ENDED = "agent_started_thinking", "agent_ended_thinking"
AUDIO_DONE = "audio_generation_done"

API_KEY = os.environ.get("API_KEY") or "123456"
MAX_TURNS = int(os.environ.get("XRX_LOAD_TURNS", "20"))
TURN_TIMEOUT_S = float(os.environ.get("XRX_LOAD_TURN_TIMEOUT_S", "30"))
AUDIO_PATH = os.environ.get("XRX_LOAD_AUDIO", "")

SAMPLE_RATE = 16_000
FRAME_BYTES = 960  # 30 ms of 16 kHz s16le mono
FRAME_S = FRAME_BYTES / (2 * SAMPLE_RATE)
TAIL_SILENCE_MS = 1500  # what a microphone keeps sending after the speaker stops
SPEECH_DBFS = -45.0  # a frame louder than this counts as speech when finding its end
QUIET_S = 1.0  # a voice turn is over when, after its last audio, nothing came for this long

# --- target -------------------------------------------------------------------------------


def loopback_ws_url(host: str | None) -> str:
    """The gateway's WebSocket URL for ``--host``; ValueError unless it is a loopback ws URL."""
    if not host:
        raise ValueError("no --host given: use --host ws://localhost:8000")
    parts = urlsplit(host)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"--host must look like ws://localhost:8000, got {host!r}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except OSError as err:
        raise ValueError(f"cannot resolve {parts.hostname!r}: {err}") from None
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ValueError(f"refusing {host!r}: this load test only targets loopback addresses")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path if path.endswith(WS_PATH) else path + WS_PATH}"


@events.test_start.add_listener
def _check_target(environment: Environment, **_: Any) -> None:
    try:
        loopback_ws_url(environment.host)
    except ValueError as err:
        print(f"locustfile: {err}", file=sys.stderr)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()


def _connect_kwargs() -> dict[str, Any]:
    kwargs: dict[str, Any] = {"additional_headers": {"x-api-key": API_KEY},
                              "open_timeout": 10, "max_size": None}
    # websockets >= 15 honours HTTP(S)_PROXY by default; a loopback target never wants one.
    if "proxy" in inspect.signature(connect).parameters:
        kwargs["proxy"] = None
    return kwargs


# --- measuring --------------------------------------------------------------------------------


def report(name: str, started: float, length: int = 0, exception: BaseException | None = None,
           ended: float | None = None) -> None:
    """One locust sample of ``name``: milliseconds from ``started`` (perf_counter) to now."""
    elapsed_ms = ((ended if ended is not None else time.perf_counter()) - started) * 1000
    events.request.fire(request_type="WS", name=name, response_time=elapsed_ms,
                        response_length=length, exception=exception, context={})


@dataclass
class Milestones:
    """The first time each named event of a turn happened; the ones never reached fail."""

    prefix: str
    started: float
    seen: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, length: int = 0, at: float | None = None) -> None:
        if name not in self.seen:
            self.seen[name] = at if at is not None else time.perf_counter()
            report(f"{self.prefix}: {name}", self.started, length, ended=self.seen[name])

    def fail_missing(self, names: tuple[str, ...], why: BaseException) -> None:
        for name in names:
            if name not in self.seen:
                report(f"{self.prefix}: {name}", self.started, 0, why)


class TurnTimeout(Exception):
    pass


class ServerError(Exception):
    pass


Message = dict[str, Any] | bytes


def converse(ws: ClientConnection, on_message: Callable[[Message, float], None],
             done: Callable[[], bool], timeout_s: float, frames: Sequence[bytes] = (),
             on_sent: Callable[[int, float], None] | None = None) -> None:
    """Send ``frames`` one per ``FRAME_S`` on a real-time clock while passing every message
    received to ``on_message``, until ``done()``; TurnTimeout after ``timeout_s``.

    One greenlet both sends and receives: no second greenlet ever touches the socket.
    """
    start = time.perf_counter()
    deadline = start + timeout_s
    sent = 0
    while not done():
        now = time.perf_counter()
        if now >= deadline:
            raise TurnTimeout(f"no end of turn within {timeout_s:g}s")
        due = start + sent * FRAME_S
        if sent < len(frames) and now >= due:
            ws.send(frames[sent])
            sent += 1
            if on_sent is not None:
                on_sent(sent, time.perf_counter())
            continue
        wait = (due if sent < len(frames) else deadline) - now
        try:
            raw = ws.recv(timeout=max(0.0, wait))
        except TimeoutError:
            continue
        on_message(raw if isinstance(raw, bytes) else json.loads(raw), time.perf_counter())


def is_agent_text(message: Message) -> bool:
    """An agent reply in words: ``type`` "audio" marks text that is (or would be) spoken."""
    return isinstance(message, dict) and message.get("user") == "agent" and (
        message.get("type") in ("text", "audio"))


def is_action(message: Message, content: str) -> bool:
    return isinstance(message, dict) and message.get("type") == "action" and (
        message.get("content") == content)


# --- users ------------------------------------------------------------------------------------


class GatewayUser(User):
    """A WebSocket session with the gateway that lasts ``XRX_LOAD_TURNS`` turns."""

    abstract = True
    wait_time = between(0.5, 1.5)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.ws: ClientConnection | None = None
        self._closer = ExitStack()
        self.turns = 0

    def session(self) -> ClientConnection:
        if self.ws is None:
            started = time.perf_counter()
            try:
                # Entered as a context manager: websockets >= 17 deprecates a bare connect().
                self.ws = self._closer.enter_context(
                    connect(loopback_ws_url(self.host), **_connect_kwargs()))
            except Exception as err:
                report("connect", started, 0, err)
                raise StopUser() from err
            report("connect", started)
        return self.ws

    def next_turn(self) -> int:
        if self.turns >= MAX_TURNS:
            raise StopUser()
        self.turns += 1
        return self.turns

    def drop_session(self) -> None:
        self.ws = None
        self._closer.close()

    def on_stop(self) -> None:
        self.drop_session()


class TextUser(GatewayUser):
    """Typed turns: the menu, an order, the order read back, over and over."""

    @task
    def text_turn(self) -> None:
        turn = self.next_turn()
        ws = self.session()
        names = (STARTED, "first agent text", ENDED)
        marks = Milestones("text", time.perf_counter())
        received = 0

        def on_message(message: Message, now: float) -> None:
            nonlocal received
            received += len(message) if isinstance(message, bytes) else len(json.dumps(message))
            if isinstance(message, bytes):
                return
            if message.get("type") == "error":
                raise ServerError(str(message.get("content")))
            if is_action(message, STARTED):
                marks.mark(STARTED, at=now)
            elif is_agent_text(message):
                marks.mark("first agent text", len(str(message.get("content", ""))), at=now)
            elif is_action(message, ENDED):
                marks.mark(ENDED, received, at=now)

        try:
            ws.send(json.dumps({"type": "text", "content": PROMPTS[(turn - 1) % len(PROMPTS)]}))
            converse(ws, on_message, lambda: ENDED in marks.seen, TURN_TIMEOUT_S)
        except (TurnTimeout, ServerError, ConnectionClosed, OSError) as err:
            marks.fail_missing(names, err)
            self.drop_session()


def load_pcm(path: str) -> bytes:
    """16 kHz mono s16le samples from a WAV file or a raw PCM file."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF":
        if len(data) % 2:
            raise ValueError(f"{path}: raw PCM must hold whole 16-bit samples")
        return data
    with wave.open(path, "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: need 16 kHz mono 16-bit audio, got "
                             f"{wav.getframerate()} Hz, {wav.getnchannels()} channel(s), "
                             f"{8 * wav.getsampwidth()}-bit")
        return wav.readframes(wav.getnframes())


def speech_end(pcm: bytes, frame_bytes: int = FRAME_BYTES, dbfs: float = SPEECH_DBFS) -> int:
    """Byte offset just after the last frame louder than ``dbfs`` (0 for silence)."""
    pcm = pcm[:len(pcm) - len(pcm) % 2]
    end = 0
    for off in range(0, len(pcm), frame_bytes):
        samples = array.array("h", pcm[off:off + frame_bytes])
        if sys.byteorder == "big":
            samples.byteswap()
        if not samples:
            continue
        rms = math.sqrt(sum(s * s for s in samples) / len(samples))
        if 20 * math.log10(max(rms, 1e-9) / 32768) > dbfs:
            end = min(off + frame_bytes, len(pcm))
    return end


class VoiceUser(GatewayUser):
    """Spoken turns from ``XRX_LOAD_AUDIO``, streamed like a microphone at real-time pace."""

    abstract = not AUDIO_PATH
    wait_time = between(1.0, 2.0)

    def on_start(self) -> None:
        speech = load_pcm(AUDIO_PATH)
        self.eos = speech_end(speech)
        if self.eos == 0:
            raise ValueError(f"{AUDIO_PATH}: no speech found")
        pcm = speech + bytes(2 * SAMPLE_RATE * TAIL_SILENCE_MS // 1000)
        self.frames = [pcm[off:off + FRAME_BYTES] for off in range(0, len(pcm), FRAME_BYTES)]
        # Speech has ended once this many frames are out.
        self.eos_frames = math.ceil(self.eos / FRAME_BYTES)

    @task
    def voice_turn(self) -> None:
        self.next_turn()
        ws = self.session()
        names = ("transcript", "first audio byte", ENDED)
        marks = Milestones("voice, from end of speech", 0.0)
        counts = {"agent texts": 0, AUDIO_DONE: 0, ENDED: 0, "audio bytes": 0}

        def on_message(message: Message, now: float) -> None:
            if marks.started == 0.0:
                return  # an answer to an earlier turn, or before the speaker finished
            if isinstance(message, bytes):
                marks.mark("first audio byte", len(message), at=now)
                counts["audio bytes"] += len(message)
            elif message.get("type") == "error":
                raise ServerError(str(message.get("content")))
            elif message.get("user") == "user":
                marks.mark("transcript", len(str(message.get("content", ""))), at=now)
            elif is_agent_text(message):
                counts["agent texts"] += 1
            elif is_action(message, ENDED):
                marks.mark(ENDED, at=now)
                counts[ENDED] += 1
            elif is_action(message, AUDIO_DONE):
                counts[AUDIO_DONE] += 1

        def done() -> bool:
            # Over once thinking ended and every agent text of the turn was spoken to the end.
            return counts[ENDED] > 0 and counts[AUDIO_DONE] >= counts["agent texts"] > 0

        def on_sent(sent: int, now: float) -> None:
            if sent == self.eos_frames:
                marks.started = now

        try:
            converse(ws, on_message, done, TURN_TIMEOUT_S + len(self.frames) * FRAME_S,
                     self.frames, on_sent)
            # Replies held behind speech come out one by one: wait for a quiet second.
            while True:
                try:
                    raw = ws.recv(timeout=QUIET_S)
                except TimeoutError:
                    break
                on_message(raw if isinstance(raw, bytes) else json.loads(raw), time.perf_counter())
        except (TurnTimeout, ServerError, ConnectionClosed, OSError) as err:
            if marks.started:
                marks.fail_missing(names, err)
            self.drop_session()
            return
        # A listener lets the answer play out before speaking again; speaking over it would be
        # a barge-in, which cancels the answer (and is a different load).
        if "first audio byte" in marks.seen:
            playback_end = marks.seen["first audio byte"] + counts["audio bytes"] / 32000
            gevent.sleep(max(0.0, playback_end - time.perf_counter()))
