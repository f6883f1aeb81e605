"""Client audio taken in the WebSocket protocol's callback (gateway/ws_protocol.py): every
message still arrives, once, in the order the client sent it, whichever path it took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import uvicorn
import websockets

from gateway.ws_protocol import AUDIO_SINK, AudioFastPath
from shared import keys, topology
from shared.keys import Stage
from shared.messages import AudioIn, entry_parts
from tests.conftest import TextSystem
from tests.harness import Client, free_port

DECLINED = b"\xff\xff"  # frames starting so are declined by the test's sink


class Recorder:
    """An ASGI endpoint that registers a sink and records where each message arrived."""

    def __init__(self) -> None:
        self.arrived: list[tuple[str, bytes | str]] = []  # (path, message)
        self.done = asyncio.Event()
        self.decline_all = False

    def sink(self, data: bytes) -> bool:
        if self.decline_all or data.startswith(DECLINED):
            return False
        self.arrived.append(("fast", data))
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        scope["extensions"][AUDIO_SINK](self.sink)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    self.arrived.append(("queued", message["text"]))
                    # Busy elsewhere (a Redis write) while the client keeps sending: what
                    # comes meanwhile must wait its turn, not overtake.
                    await asyncio.sleep(0.05)
                else:
                    if message["bytes"].startswith(DECLINED):
                        # Holding a frame while busy (the gateway answering a bad frame):
                        # the frames behind it must not go round it.
                        await asyncio.sleep(0.005)
                    self.arrived.append(("queued", message["bytes"]))
        finally:
            scope["extensions"][AUDIO_SINK](None)
            self.done.set()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    app = Recorder()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws=AudioFastPath,
                                           lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn's Server offers a flag, not an event
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield app, port
    server.should_exit = True
    await task


async def test_frames_keep_their_order_across_both_paths(
        recorder: tuple[Recorder, int]) -> None:
    app, port = recorder
    sent: list[bytes | str] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        for i in range(300):
            if i % 50 == 25:
                message: bytes | str = f"text {i}"
            elif i % 70 == 35:
                message = DECLINED + i.to_bytes(2, "big")
            else:
                message = i.to_bytes(2, "big") * 4
            sent.append(message)
            await ws.send(message)
            if i % 100 >= 20:  # paced as a live client; the first 20 of each 100 in a burst
                await asyncio.sleep(0.001)
    await asyncio.wait_for(app.done.wait(), 5)
    assert [m for _, m in app.arrived] == sent
    paths = {m: path for path, m in app.arrived}
    # Audio went the short way while the endpoint waited; text and declined frames never did.
    assert sum(path == "fast" for path, _ in app.arrived) > 100
    assert any(path == "queued" and isinstance(m, bytes) and not m.startswith(DECLINED)
               for path, m in app.arrived)  # a burst waited behind the text it followed
    assert all(paths[m] == "queued" for m in sent
               if isinstance(m, str) or m.startswith(DECLINED))


async def test_without_a_sink_every_frame_is_queued(recorder: tuple[Recorder, int]) -> None:
    app, port = recorder
    app.decline_all = True
    frames = [i.to_bytes(2, "big") for i in range(50)]
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        for frame in frames:
            await ws.send(frame)
    await asyncio.wait_for(app.done.wait(), 5)
    assert app.arrived == [("queued", f) for f in frames]


async def test_gateway_audio_reaches_the_vad_whole_and_in_order(
        text_system: TextSystem) -> None:
    """Audio around a text message and a refused frame: every good frame is in the session's
    VAD partition, in order; the refused one is answered and not written."""
    url = f"ws://127.0.0.1:{text_system.gateway_port}/api/v1/ws?session_info=1"
    client = Client(await websockets.connect(url, additional_headers={"x-api-key": "123456"}))
    r = aioredis.from_url(text_system.redis_url)
    try:
        sid = (await client.next(5))["content"]["session_id"]
        expected = b""
        for i in range(120):
            frame = bytes([i % 251, 7]) * 240  # 480 bytes: 15 ms of 16 kHz audio
            await client.ws.send(frame)
            expected += frame
            if i == 40:
                await client.say("hello")
            if i == 80:
                await client.ws.send(b"\x01\x02\x03")
            await asyncio.sleep(0.003)
        stream = keys.stage_partition(Stage.VAD, topology.partition_of(sid))
        got = b""
        for _ in range(100):
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(stream))
            got = b"".join(AudioIn.decode(f).pcm for _, fields in entries
                           for s, f in entry_parts(fields) if s == sid)
            if len(got) >= len(expected):
                break
            await asyncio.sleep(0.1)
        assert got == expected
        errors = [m for m in await client.drain(1.0)
                  if isinstance(m, dict) and m.get("type") == "error"]
        assert errors and "odd length" in errors[0]["content"]
    finally:
        await client.close()
        await r.aclose()
