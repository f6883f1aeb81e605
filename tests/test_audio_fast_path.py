"""Client audio taken in the WebSocket protocol's callback (gateway/ws_protocol.py): every
message still arrives, once, in the order the client sent it, whichever path it took."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import uvicorn
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from gateway.ws_protocol import AUDIO_SINK, AudioFastPath
from shared import keys, topology
from shared.keys import Stage
from shared.messages import AudioIn, entry_parts
from tests.conftest import TextSystem
from tests.harness import Client, free_port

DECLINED = b"\xff\xff"  # frames starting so are declined by the test's sink


def masked_frame(first_byte: int, payload: bytes, mask: bytes) -> bytes:
    """A client frame built by hand (payload under 126 bytes), with a chosen mask."""
    return bytes([first_byte, 0x80 | len(payload)]) + mask + apply_mask(payload, mask)


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


@asynccontextmanager
async def serving(*, deflate: bool = False) -> AsyncIterator[tuple[Recorder, int]]:
    """A real uvicorn server with the gateway's protocol class around a :class:`Recorder`
    (per-message deflate off, as the gateway runs, unless ``deflate``)."""
    app = Recorder()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws=AudioFastPath,
                                           ws_per_message_deflate=deflate, lifespan="off",
                                           log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn's Server offers a flag, not an event
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield app, port
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    async with serving() as served:
        yield served


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


async def test_compressed_frames_go_the_usual_way() -> None:
    """With per-message deflate negotiated the client compresses its frames (RSV1): the
    short path leaves them to the parser, which inflates them."""
    async with serving(deflate=True) as (app, port):
        frames = [bytes(480) + i.to_bytes(2, "big") for i in range(50)]
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            for frame in frames:
                await ws.send(frame)
                await asyncio.sleep(0.001)
        await asyncio.wait_for(app.done.wait(), 5)
    assert app.arrived == [("queued", f) for f in frames]


async def test_without_a_sink_every_frame_is_queued(recorder: tuple[Recorder, int]) -> None:
    app, port = recorder
    app.decline_all = True
    frames = [i.to_bytes(2, "big") for i in range(50)]
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        for frame in frames:
            await ws.send(frame)
    await asyncio.wait_for(app.done.wait(), 5)
    assert app.arrived == [("queued", f) for f in frames]


async def test_frames_split_anywhere_fragmented_or_pinged_arrive_whole(
        recorder: tuple[Recorder, int]) -> None:
    """Frames cut at arbitrary points by TCP, a fragmented message, a ping, 16-bit lengths
    and a frame over 64 KiB: the short path takes what it can, the parser the rest."""
    app, port = recorder
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"))
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    while client.state.name == "CONNECTING":
        client.receive_data(await reader.read(4096))
    rng = random.Random(7)
    expected: list[bytes | str] = []
    writes: list[bytes] = []  # what goes on the wire per message
    for i in range(200):
        if i == 50:
            client.send_binary(b"first half,", fin=False)
            client.send_continuation(b" second half", fin=True)
            expected.append(b"first half, second half")
        elif i == 100:
            client.send_ping(b"are you there")
        elif i == 150:
            big = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
            client.send_binary(big)
            expected.append(big)
        else:
            frame = rng.randbytes(rng.choice([2, 124, 126, 960, 4000]))
            client.send_binary(frame)
            expected.append(frame)
        writes.append(b"".join(client.data_to_send()))
    # As TCP may deliver them: mostly a message per read, some cut anywhere (the parser
    # keeps the piece), some several to a read.
    chunks: list[bytes] = []
    for i, wire in enumerate(writes):
        roll = rng.random()
        if i == 20:
            # Cut right after the header: the parser waits mid-frame with nothing buffered,
            # and what comes next looks like a frame of its own (a mask starting 0x82 0x82)
            # but is not one.
            wire = masked_frame(0x82, b"a frame whose mask looks like a header",
                                b"\x82\x82\x00\x00")
            expected[20] = b"a frame whose mask looks like a header"
            chunks += [wire[:2], wire[2:]]
        elif i == 30 and len(wire) > 8:
            cut = (4 if wire[1] & 0x7F == 126 else 2) + 4  # right after the mask
            chunks += [wire[:cut], wire[cut:]]
        elif roll < 0.15 and len(wire) > 1:
            cut = rng.randint(1, len(wire) - 1)
            chunks += [wire[:cut], wire[cut:]]
        elif roll < 0.3 and chunks:
            chunks[-1] += wire
        else:
            chunks.append(wire)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.002)
    pongs: list[Frame] = []
    for _ in range(100):
        if pongs:
            break
        client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        pongs += [e for e in client.events_received()
                  if isinstance(e, Frame) and e.opcode is Opcode.PONG]
    assert pongs and pongs[0].data == b"are you there"
    client.send_close()
    writer.write(b"".join(client.data_to_send()))
    await asyncio.wait_for(app.done.wait(), 5)
    writer.close()
    assert [m for _, m in app.arrived] == expected
    paths = [path for path, _ in app.arrived]
    assert paths.count("fast") > 50 and paths.count("queued") >= 2
    assert app.arrived[50] == ("queued", b"first half, second half")


async def test_a_whole_frame_inside_a_fragmented_message_is_a_protocol_error(
        recorder: tuple[Recorder, int]) -> None:
    app, port = recorder
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.transport is not None
        ws.transport.write(masked_frame(0x02, b"first part", b"\x01\x02\x03\x04"))
        await asyncio.sleep(0.05)
        ws.transport.write(masked_frame(0x82, b"not a continuation", b"\x05\x06\x07\x08"))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    await asyncio.wait_for(app.done.wait(), 5)
    assert app.arrived == []


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
