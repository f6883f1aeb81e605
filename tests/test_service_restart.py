"""A speech service replica going down mid-request (a rolling restart closes its clients with
1012) is not an outage: the bridges' clients ask once more on a new connection, over real
WebSockets. A TTS reply already under way is not asked again (its start would be said twice),
and a service that keeps closing is reported down after that one retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.tts.messages import DONE
from shared.ws_pool import ServiceUnavailable
from stt_bridge.stt_client import SttClient
from tests.fakes import serve
from tts_bridge.tts_client import TtsClient

SERVICE_RESTART = 1012
CHUNK = b"\x01\x00" * 800


@dataclass
class Restarting:
    """Closes its first ``closing`` connections with 1012 once asked (after ``chunks_first``
    audio chunks, for TTS), then answers."""

    closing: int = 1
    chunks_first: int = 0
    connections: int = 0
    asked: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def stt(ws: WebSocket) -> None:
            await ws.accept()
            self.connections += 1
            doomed = self.connections <= self.closing
            try:
                while True:
                    pcm = await ws.receive_bytes()
                    self.asked.append(f"{len(pcm)} bytes")
                    if doomed:
                        await ws.close(SERVICE_RESTART)
                        return
                    await ws.send_text("large pizza")
            except WebSocketDisconnect:
                return

        async def tts(ws: WebSocket) -> None:
            await ws.accept()
            self.connections += 1
            doomed = self.connections <= self.closing
            try:
                while True:
                    self.asked.append(await ws.receive_text())
                    for _ in range(self.chunks_first if doomed else 3):
                        await ws.send_bytes(CHUNK)
                    if doomed:
                        await ws.close(SERVICE_RESTART)
                        return
                    await ws.send_text(DONE)
            except WebSocketDisconnect:
                return

        return Starlette(routes=[WebSocketRoute("/stt", stt), WebSocketRoute("/tts", tts)])


@asynccontextmanager
async def service(fake: Restarting) -> AsyncIterator[str]:
    async with serve(fake.app()) as url:
        yield url.replace("http://", "ws://")


async def test_stt_asks_again_when_the_replica_goes_down_mid_utterance() -> None:
    fake = Restarting(closing=1)
    async with service(fake) as url:
        client = SttClient(f"{url}/stt", timeout_s=5)
        try:
            assert await client.transcribe(b"\x00\x01" * 1600) == "large pizza"
        finally:
            await client.aclose()
    assert fake.connections == 2 and fake.asked == ["3200 bytes", "3200 bytes"]


async def test_stt_reports_a_service_that_keeps_closing_as_down() -> None:
    fake = Restarting(closing=10)
    async with service(fake) as url:
        client = SttClient(f"{url}/stt", timeout_s=5)
        try:
            with pytest.raises(ServiceUnavailable):
                await client.transcribe(b"\x00\x01" * 1600)
        finally:
            await client.aclose()
    assert fake.connections == 2  # asked once more, not forever


async def test_tts_asks_again_when_the_replica_goes_down_before_any_audio() -> None:
    fake = Restarting(closing=1, chunks_first=0)
    async with service(fake) as url:
        client = TtsClient(f"{url}/tts", chunk_timeout_s=5)
        try:
            chunks = [chunk async for chunk in client.synthesize("Sure, one large pizza.")]
        finally:
            await client.aclose()
    assert chunks == [CHUNK] * 3
    assert fake.connections == 2 and len(fake.asked) == 2


async def test_tts_reply_cut_after_its_first_audio_is_not_said_twice() -> None:
    fake = Restarting(closing=1, chunks_first=2)
    async with service(fake) as url:
        client = TtsClient(f"{url}/tts", chunk_timeout_s=5)
        chunks: list[bytes] = []
        try:
            with pytest.raises(ServiceUnavailable):
                async for chunk in client.synthesize("Sure, one large pizza."):
                    chunks.append(chunk)
        finally:
            await client.aclose()
    assert chunks == [CHUNK] * 2
    assert fake.connections == 1
