"""uvicorn's WebSocket protocol with a short path for client audio.

A voice client sends a binary frame every 20-30 ms, and under ASGI each one costs the same
as any message: uvicorn queues it, pauses the socket, wakes the endpoint's task (which
resumes through every Starlette middleware around the endpoint), and resumes the socket
once the queue is empty again. That was about a third of what the gateway spent per frame
(``python -m bench --only redis``: frames per second a gateway takes at full CPU).

:class:`AudioFastPath` keeps all of that for everything else, and lets the endpoint take a
binary frame in the protocol's own callback instead, through a *sink* it registers with
:data:`AUDIO_SINK` in the scope's extensions. Order is kept: the sink only sees a frame while
the endpoint waits in ``receive()`` with nothing queued (so it holds no earlier message), and
a sink that declines a frame (a bad frame, a full audio queue) sends it the usual way, where
the endpoint answers it as before and the socket is paused until it has.
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

# scope["extensions"][AUDIO_SINK](sink) registers a sink; (None) removes it. A sink returns
# False to decline a frame (it then arrives through receive() as usual).
AUDIO_SINK = "xrx.audio_sink"
AudioSink = Callable[[bytes], bool]


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

    def send_receive_event_to_app(self) -> None:
        sink = self._sink
        if (sink is not None and self.curr_msg_data_type == "bytes" and self._app_waiting
                and not self.close_sent and self.queue.empty()):
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if sink(data):
                self.frames = []
                return
            self.frames = [data]
        super().send_receive_event_to_app()
