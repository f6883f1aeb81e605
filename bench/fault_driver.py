"""The fault benchmark's load driver: ``python -m bench.pipeline_driver``'s client and clock,
with every utterance marked (``bench/fault_fakes.py``) and every reply recorded, streaming
until told to stop.

``python -m bench.fault_driver CONFIG.json OUT.json``: connects every session, prints
``ready``, reads the start time (``time.monotonic()``) from stdin, streams until it reads
``stop``, waits up to LOSS_S for the last utterances' replies, writes what it saw. A session
the server closes reconnects (as a new session) a second later, so a fault that ends
connections does not thin the load for the faults after it.

Per session it records (seconds from the start): utterance ends ``[utterance, t]`` (only
utterances sent whole), audio frames ``[t, reply text, chunk index]`` (the fake TTS's tag),
agent and user texts, ``clear_audio_buffer``, error messages, closes and connects with their
local port (the gateway logs it with the session id).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench import fault_fakes, pipeline_driver
from bench.pipeline_driver import (
    FRAME_S,
    LOSS_S,
    OP_BIN,
    OP_TEXT,
    TICK_S,
    TICKS_PER_FRAME,
    Driver,
    Session,
    WsClient,
    client_frame,
)

RECONNECT_S = 1.0


@dataclass
class FaultSession(Session):
    utterances: list[list[Any]] = field(default_factory=list)
    audio: list[list[Any]] = field(default_factory=list)
    agent: list[list[Any]] = field(default_factory=list)
    user: list[list[Any]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    errors: list[list[Any]] = field(default_factory=list)
    closes: list[float] = field(default_factory=list)
    connects: list[list[Any]] = field(default_factory=list)  # [t, local port]
    answered: set[str] = field(default_factory=set)  # tokens some audio frame named
    whole: bool = False  # the utterance being sent has had every frame sent so far
    marked_utt: int = -1
    marked: list[bytes] = field(default_factory=list)
    reconnecting: bool = False


class FaultClient(WsClient):
    t0 = 0.0  # the driver's start, for relative times

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        s = self.session
        assert isinstance(s, FaultSession)
        port = transport.get_extra_info("sockname")[1]
        s.connects.append([round(time.monotonic() - self.t0, 4), port])

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.session
        assert isinstance(s, FaultSession)
        if not s.closed:
            s.closes.append(round(time.monotonic() - self.t0, 4))
        super().connection_lost(exc)

    def frame(self, opcode: int, buf: bytearray, off: int, length: int, now: float) -> None:
        s = self.session
        assert isinstance(s, FaultSession)
        t = round(now - self.t0, 4)
        if opcode == OP_BIN:
            tag = fault_fakes.parse_tag(memoryview(buf)[off:off + min(length, 512)])
            text, index = tag if tag is not None else ("", -1)
            s.audio.append([t, text, index])
            s.answered.update(fault_fakes.tokens(text))
        elif opcode == OP_TEXT:
            try:
                msg = json.loads(bytes(buf[off:off + length]))
            except ValueError:
                return
            if not isinstance(msg, dict):
                return
            content, user = msg.get("content"), msg.get("user")
            if content == "clear_audio_buffer":
                s.clears.append(t)
            elif msg.get("type") == "error":
                s.errors.append([t, str(content)])
            elif user == "agent" and isinstance(content, str) and content not in (
                    "agent_started_thinking", "agent_ended_thinking"):
                s.agent.append([t, content])
            elif user == "user" and isinstance(content, str):
                s.user.append([t, content])
        else:
            super().frame(opcode, buf, off, length, now)


class FaultDriver(Driver):
    client_class = FaultClient

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.sessions: list[Session] = [
            FaultSession(s.index, s.start_tick) for s in self.sessions]
        with open(cfg["pcm_path"], "rb") as f:
            self.pcm = f.read()
        self.frame_bytes = int(cfg["frame_bytes"])
        self.stopping = False
        self.t0 = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def marked_frames(self, s: FaultSession, utt: int) -> list[bytes]:
        if s.marked_utt != utt:
            speech = self.pcm[:(self.last_voiced + 1) * self.frame_bytes]
            pcm = fault_fakes.watermark(speech, s.index, utt)
            fb = self.frame_bytes
            s.marked = [client_frame(OP_BIN, pcm[o:o + fb], self.mask)
                        for o in range(0, len(pcm), fb)]
            s.marked_utt = utt
        return s.marked

    async def reconnect(self, s: FaultSession) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping:
                await asyncio.sleep(RECONNECT_S)
                try:
                    _, proto = await loop.create_connection(
                        lambda: self.client_class(s, self._request(), self.mask,
                                                  self.cfg["reply_text"]),
                        "127.0.0.1", int(self.cfg["port"]))
                    await asyncio.wait_for(proto.upgraded, 10)
                except (OSError, ConnectionError, TimeoutError):
                    continue
                s.proto, s.closed, s.whole = proto, False, False
                return
        finally:
            s.reconnecting = False

    async def stream(self, t0: float) -> None:
        phases: list[list[FaultSession]] = [[], [], []]
        for s in self.sessions:
            assert isinstance(s, FaultSession)
            phases[s.start_tick % TICKS_PER_FRAME].append(s)
        frames, cycle, last_voiced = self.frames, self.cycle, self.last_voiced
        tick = 0
        while not self.stopping:
            due = t0 + tick * TICK_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                self.late_ticks_max_ms = max(self.late_ticks_max_ms, 1000 * (now - due))
            for s in phases[tick % TICKS_PER_FRAME]:
                k = (tick - s.start_tick) // TICKS_PER_FRAME
                if k < 0:
                    continue
                utt, pos = divmod(k, cycle)
                if pos == 0:
                    s.whole = True
                if s.closed or s.proto is None:
                    s.whole = False
                    if not s.reconnecting:
                        s.reconnecting = True
                        self.tasks.add(task := asyncio.create_task(self.reconnect(s)))
                        task.add_done_callback(self.tasks.discard)
                    continue
                transport = s.proto.transport
                assert transport is not None
                if pos <= last_voiced:
                    transport.write(self.marked_frames(s, utt)[pos])
                    if pos == last_voiced and s.whole:
                        s.utterances.append([utt, round(time.monotonic() - t0, 4)])
                else:
                    transport.write(frames[pos])
            tick += 1

    async def drain(self) -> None:
        deadline = time.monotonic() + LOSS_S
        while time.monotonic() < deadline:
            pending = False
            for s in self.sessions:
                assert isinstance(s, FaultSession)
                if s.utterances and f"s{s.index}u{s.utterances[-1][0]}" not in s.answered:
                    pending = True
            if not pending:
                return
            await asyncio.sleep(0.2)

    def fault_results(self) -> dict[str, Any]:
        sessions = []
        for s in self.sessions:
            assert isinstance(s, FaultSession)
            sessions.append({
                "index": s.index, "start_s": round(s.start_tick * TICK_S, 3),
                "utterances": s.utterances, "audio": s.audio, "agent": s.agent,
                "user": s.user, "clears": s.clears, "errors": s.errors, "closes": s.closes,
                "connects": s.connects})
        return {"sessions": sessions, "connect_failures": self.connect_failures,
                "late_tick_max_ms": round(self.late_ticks_max_ms, 1), "frame_s": FRAME_S}


async def amain(cfg: dict[str, Any]) -> dict[str, Any]:
    driver = FaultDriver(cfg)
    # Connect times are relative to the start, known only later: record them as monotonic
    # values first (t0 = 0), shift them once t0 is known.
    await driver.connect_all()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    t0 = float(await loop.run_in_executor(None, sys.stdin.readline))
    driver.t0 = FaultClient.t0 = t0
    for s in driver.sessions:
        assert isinstance(s, FaultSession)
        s.connects = [[round(t - t0, 4), port] for t, port in s.connects]

    async def wait_stop() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "stop":
                driver.stopping = True
                return

    stopper = asyncio.create_task(wait_stop())
    await driver.stream(t0)
    await stopper
    await driver.drain()
    out = driver.fault_results()
    driver.close_all()
    await asyncio.sleep(0.2)
    return out


def main() -> None:
    pipeline_driver.main(amain)


if __name__ == "__main__":
    main()
