"""uvicorn's WebSocket protocol with a short path for client audio.

A voice client sends a binary frame every 20-30 ms, and under ASGI each one costs the same
as any message: the ``websockets`` parser (a generator that yields per header field) makes
an event of it, uvicorn queues it, pauses the socket, wakes the endpoint's task (which
resumes through every Starlette middleware around the endpoint), and resumes the socket
once the queue is empty again.

:class:`AudioFastPath` keeps all of that for everything else, and lets the endpoint take
audio in the protocol's own callback instead, through a *sink* it registers with
:data:`AUDIO_SINK` in the scope's extensions. What it takes is narrow on purpose: whole,
masked, unfragmented binary frames of at most 64 KiB, read only where the parser itself
would start a new frame (its buffer empty, waiting for the next header), while no
fragmented message is open. Anything else, and everything after it in the same read, goes
to the parser as usual, which then validates, answers pings and closes as it always does.

Order is kept: the sink sees a frame only while the endpoint waits in ``receive()`` with
nothing queued (so it holds no earlier message), and a frame the sink declines (a bad frame,
a full audio queue) goes to the parser, where the endpoint answers it as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # a platform without the C extension
    from websockets.utils import apply_mask

# scope["extensions"][AUDIO_SINK](sink) registers a sink; (None) removes it. A sink returns
# False to decline a frame (it then arrives through receive() as usual).
AUDIO_SINK = "xrx.audio_sink"
AudioSink = Callable[[bytes], bool]

_FIN_BINARY = 0x82  # FIN set, no RSV bits (no extension is negotiated), opcode 2
_MASKED = 0x80
_LEN16 = 126  # a 16-bit length follows; 127 (a 64-bit one) is left to the parser
_MASK_BYTES = 4
# The parser is between frames when its innermost step is this one (websockets 14-17).
_BETWEEN_FRAMES = StreamReader.at_eof.__code__


def _fragment_open(conn: Any) -> bool:
    """Whether a fragmented message is in progress (True when this cannot be told)."""
    for name in ("current_size", "cur_size"):  # websockets >= 15, 14
        if hasattr(conn, name):
            return getattr(conn, name) is not None
    return True


class AudioFastPath(WebSocketsSansIOProtocol):
    _sink: AudioSink | None = None
    _app_waiting = False  # the endpoint is parked in receive(), holding no message

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # None: the handshake was refused
        if scope is not None:
            # The endpoint's task starts on the next loop turn, so it sees this.
            scope["extensions"][AUDIO_SINK] = self._set_sink

    def _set_sink(self, sink: AudioSink | None) -> None:
        self._sink = sink

    async def receive(self) -> ASGIReceiveEvent:
        self._app_waiting = True
        try:
            return await super().receive()
        finally:
            self._app_waiting = False

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and self._may_bypass():
            taken = self._take_audio(data, sink)
            if taken == len(data):
                return
            data = data[taken:]
        super().data_received(data)

    def _may_bypass(self) -> bool:
        if not self._app_waiting or self.close_sent or not self.queue.empty():
            return False
        conn = self.conn
        if (conn.state is not State.OPEN or conn.parser_exc is not None or conn.reader.buffer
                or _fragment_open(conn)):
            return False
        step = conn.parser
        while (inner := getattr(step, "gi_yieldfrom", None)) is not None:
            step = inner
        return getattr(step, "gi_code", None) is _BETWEEN_FRAMES

    def _take_audio(self, data: bytes, sink: AudioSink) -> int:
        """Hand the whole binary frames at the start of ``data`` to ``sink``; return how many
        bytes were taken (the rest, from a frame boundary, is the parser's)."""
        limit = self.config.ws_max_size
        at, end_of_data = 0, len(data)
        while at + 2 <= end_of_data:
            if data[at] != _FIN_BINARY or not data[at + 1] & _MASKED:
                break
            length, head = data[at + 1] & 0x7F, 2
            if length == _LEN16:
                if at + 4 > end_of_data:
                    break
                length, head = int.from_bytes(data[at + 2:at + 4], "big"), 4
            elif length > _LEN16:
                break
            start = at + head + _MASK_BYTES
            end = start + length
            if end > end_of_data or length > limit:
                break
            if not sink(apply_mask(data[start:end], data[at + head:start])):
                break
            at = end
        return at
