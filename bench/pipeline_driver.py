"""The real-time load driver of the pipeline benchmark: one process streaming speech on many
WebSocket sessions, as cheaply as Python allows, so the box's CPU goes to the system measured.

``python -m bench.pipeline_driver CONFIG.json OUT.json``. It connects every session, prints
``ready``, reads the common start time (a ``time.monotonic()`` value, the same clock in every
process on Linux) from stdin, then streams. Cheap by construction:

- a minimal WebSocket client on a bare asyncio protocol (uvloop): the whole audio cycle is
  precomputed as masked client frames, so sending a 30 ms frame is one ``transport.write``;
  received frames are only parsed far enough to tell audio from JSON;
- one 10 ms ticker for all sessions instead of a sleeping task per session: session j sends
  frame k at ``start + start_j + k * 30 ms`` on an absolute clock (late ticks catch up in
  order, so there is no drift), sessions spread over three 10 ms phases.

Per turn (one utterance of the cycle) it records when its last voiced frame was written and
when the first binary frame came back after it; see ``Turn``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

FRAME_S = 0.030
TICK_S = 0.010
TICKS_PER_FRAME = 3
LOSS_S = 15.0  # a turn with no audio back within this is lost
CONNECT_CONCURRENCY = 32

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One masked client frame (RFC 6455 5.2): clients must mask, servers never do. A fixed
    mask per process is allowed by the server side; only proxies care about unpredictability."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    reps = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(reps, "little")).to_bytes(
        n, "little")
    return head + mask + masked


@dataclass
class Turn:
    """One utterance: ``end`` = when its last voiced frame was written; ``first_audio`` = the
    first binary frame after that and before the next utterance's end (else the turn is lost);
    ``texts`` = agent reply texts and ``starts`` = audio reply starts in that window (more than
    one of either means the utterance was answered twice)."""

    end: float
    first_audio: float | None = None
    texts: int = 0
    starts: int = 0


@dataclass
class Session:
    index: int
    start_tick: int
    proto: WsClient | None = None
    turns: list[Turn] = field(default_factory=list)
    playing: bool = False  # inside an audio reply: the next binary frame does not start one
    closed: bool = False


class WsClient(asyncio.Protocol):
    """Handshake, then server frames parsed from a byte buffer; pings answered."""

    def __init__(self, session: Session, request: bytes, mask: bytes, reply_text: str) -> None:
        self.session, self.request, self.mask, self.reply_text = session, request, mask, reply_text
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.handshaken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            del self.buf[:end + 4]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.handshaken = True
            self.upgraded.set_result(None)
        now = time.monotonic()
        buf = self.buf
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, off = b1 & 0x7F, pos + 2
            if length == 126:
                if n - off < 2:
                    break
                length, off = (buf[off] << 8) | buf[off + 1], off + 2
            elif length == 127:
                if n - off < 8:
                    break
                length, off = int.from_bytes(buf[off:off + 8], "big"), off + 8
            if n - off < length:
                break
            self.frame(b0 & 0x0F, buf, off, length, now)
            pos = off + length
        if pos:
            del buf[:pos]

    def frame(self, opcode: int, buf: bytearray, off: int, length: int, now: float) -> None:
        s = self.session
        if opcode == OP_BIN:
            if not s.turns:
                return
            turn = s.turns[-1]
            if turn.first_audio is None and now - turn.end <= LOSS_S:
                turn.first_audio = now
            if not s.playing:
                turn.starts += 1
                s.playing = True
        elif opcode == OP_TEXT:
            try:
                msg = json.loads(bytes(buf[off:off + length]))
            except ValueError:
                return
            if not isinstance(msg, dict):
                return
            content = msg.get("content")
            if content in ("audio_generation_done", "clear_audio_buffer"):
                s.playing = False
            elif msg.get("user") == "agent" and content == self.reply_text and s.turns:
                s.turns[-1].texts += 1
        elif opcode == OP_PING and self.transport is not None:
            self.transport.write(client_frame(OP_PONG, bytes(buf[off:off + length]), self.mask))
        elif opcode == OP_CLOSE:
            s.closed = True
            if self.transport is not None:
                self.transport.close()


class Driver:
    client_class: type[WsClient] = WsClient  # what a subclass parses replies with

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.mask = os.urandom(4)
        with open(cfg["pcm_path"], "rb") as f:
            pcm = f.read()
        fb = int(cfg["frame_bytes"])
        self.frames = [client_frame(OP_BIN, pcm[o:o + fb], self.mask)
                       for o in range(0, len(pcm) - fb + 1, fb)]
        self.cycle = len(self.frames)
        self.last_voiced = int(cfg["last_voiced_frame"])
        # Whole cycles: a session stopped soon after an utterance never sends the silence
        # that ends it, and its turn would count as lost (one per session at some lengths:
        # 500 of 5,500 at N=500, 40 s) though the system never had the chance to answer.
        frames = round(float(cfg["seconds"]) / FRAME_S)
        self.total_frames = math.ceil(frames / self.cycle) * self.cycle
        self.sessions = [Session(i, round(float(off) / TICK_S))
                         for i, off in zip(cfg["session_ids"], cfg["start_offsets_s"],
                                           strict=True)]
        self.connect_failures = 0
        self.late_ticks_max_ms = 0.0

    def _request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        host = f"127.0.0.1:{self.cfg['port']}"
        return (f"GET {self.cfg['path']} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(s: Session) -> None:
            async with gate:
                for _ in range(3):
                    try:
                        _, proto = await loop.create_connection(
                            lambda: self.client_class(s, self._request(), self.mask,
                                                      self.cfg["reply_text"]),
                            "127.0.0.1", int(self.cfg["port"]))
                        await asyncio.wait_for(proto.upgraded, 30)
                        s.proto, s.closed = proto, False
                        return
                    except (OSError, ConnectionError, TimeoutError):
                        await asyncio.sleep(0.5)
                self.connect_failures += 1

        await asyncio.gather(*(one(s) for s in self.sessions))

    async def stream(self, t0: float) -> None:
        phases: list[list[Session]] = [[], [], []]
        for s in self.sessions:
            if s.proto is not None:
                phases[s.start_tick % TICKS_PER_FRAME].append(s)
        last_tick = max((s.start_tick for s in self.sessions), default=0) \
            + self.total_frames * TICKS_PER_FRAME
        frames, cycle, last_voiced, total = (self.frames, self.cycle, self.last_voiced,
                                             self.total_frames)
        tick = 0
        while tick <= last_tick:
            due = t0 + tick * TICK_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                self.late_ticks_max_ms = max(self.late_ticks_max_ms, 1000 * (now - due))
            for s in phases[tick % TICKS_PER_FRAME]:
                k = (tick - s.start_tick) // TICKS_PER_FRAME
                if k < 0 or k >= total or s.closed or s.proto is None:
                    continue
                transport = s.proto.transport
                assert transport is not None
                transport.write(frames[k % cycle])
                if k % cycle == last_voiced:
                    s.turns.append(Turn(time.monotonic()))
            tick += 1

    async def drain(self) -> None:
        """Give every last turn its chance: up to LOSS_S after its end for the first audio."""
        while True:
            now = time.monotonic()
            pending = [s for s in self.sessions if not s.closed and s.turns
                       and s.turns[-1].first_audio is None and now - s.turns[-1].end < LOSS_S]
            if not pending:
                return
            await asyncio.sleep(0.2)

    def close_all(self) -> None:
        for s in self.sessions:
            if s.proto is not None and s.proto.transport is not None and not s.closed:
                s.proto.transport.write(client_frame(OP_CLOSE, struct.pack("!H", 1000),
                                                     self.mask))
                s.proto.transport.close()

    def results(self, t0: float) -> dict[str, Any]:
        turns = []
        for s in self.sessions:
            start = t0 + s.start_tick * TICK_S
            for t in s.turns:
                turns.append([s.index, round(t.end - t0, 4), round(t.end - start, 4),
                              None if t.first_audio is None else round(t.first_audio - t.end, 5),
                              t.texts, t.starts])
        return {"turns": turns, "connect_failures": self.connect_failures,
                "closed_by_server": sum(1 for s in self.sessions if s.closed),
                "late_tick_max_ms": round(self.late_ticks_max_ms, 1), "pid": os.getpid()}


async def amain(cfg: dict[str, Any]) -> dict[str, Any]:
    driver = Driver(cfg)
    await driver.connect_all()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    t0 = float(line)
    await driver.stream(t0)
    closed_during_run = sum(1 for s in driver.sessions if s.closed)
    await driver.drain()
    out = driver.results(t0)
    out["closed_during_run"] = closed_during_run
    driver.close_all()
    await asyncio.sleep(0.2)
    return out


def main(run: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] = amain) -> None:
    """``python -m <driver> CONFIG.json RESULTS.json``: ``run`` the config, write the results."""
    import uvloop

    cfg = json.loads(Path(sys.argv[1]).read_text())
    out = uvloop.run(run(cfg))
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
