"""STT_PROVIDER=deepgram-style streaming: audio flows to STT continuously, no VAD segmentation,
and every text the provider returns is a final transcript (the original's behaviour)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, free_port, summary, wait_port, wait_ready
from tests.test_voice_conversation import FRAME_30MS, spoken, stream, transcripts

pytestmark = pytest.mark.voice

TRANSCRIPT = "I would like a large pepperoni"
BYTES_PER_TRANSCRIPT = 2 * 32000  # the fake "recognises" a sentence per 2 s of audio


@dataclass
class FakeStreamingStt:
    """A local stand-in for a streaming provider behind the xRx STT protocol."""

    received: int = 0
    connections: int = 0
    texts_sent: list[str] = field(default_factory=list)

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        self.connections += 1
        pending = 0
        try:
            while True:
                data = await ws.receive_bytes()
                self.received += len(data)
                pending += len(data)
                if pending >= BYTES_PER_TRANSCRIPT:
                    pending = 0
                    self.texts_sent.append(TRANSCRIPT)
                    await ws.send_text(TRANSCRIPT)
        except WebSocketDisconnect:
            pass


@pytest.fixture
async def fake_stt() -> AsyncIterator[tuple[FakeStreamingStt, int]]:
    fake = FakeStreamingStt()
    port = free_port()
    app = Starlette(routes=[WebSocketRoute("/api/v1/ws", fake.endpoint)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    await asyncio.to_thread(wait_port, port)
    yield fake, port
    server.should_exit = True
    await task


async def test_streaming_provider_gets_all_audio_and_its_texts_become_turns(
        redis_server: RedisServer, fake_stt: tuple[FakeStreamingStt, int]) -> None:
    fake, port = fake_stt
    env = make_env(redis_server, 5, GUARDRAILS_AGENT_HOST="", STT_PROVIDER="deepgram",
                   STT_PORT=str(port), TTS_PORT=str(free_port()))
    system = TextSystem(redis_server, 5, env)
    try:
        system.start("demo-agent", "demo-agent", int(env["AGENT_PORT"]))
        system.start("tts-service", "tts-service", int(env["TTS_PORT"]))
        for name in ("agent-bridge", "vad-worker", "stt-bridge", "tts-bridge"):
            system.start(name, name)
        system.start("gateway", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        client = await Client.connect(system.gateway_port)
        audio = spoken("Hello there", lead_ms=1000, tail_ms=1500)  # silence is streamed too
        await stream(client, audio, FRAME_30MS)
        got = await client.until(lambda m: isinstance(m, dict) and m.get("type") == "audio"
                                 and m.get("user") == "agent", timeout=30)
        assert transcripts(got) == [TRANSCRIPT], summary(got)
        # Nothing was cut to utterances: (nearly) every byte reached the provider.
        for _ in range(50):
            if fake.received >= len(audio) - FRAME_30MS:
                break
            await asyncio.sleep(0.1)
        assert fake.received >= len(audio) - FRAME_30MS, (fake.received, len(audio))
        assert fake.connections == 1
        await client.close()
    finally:
        system.stop_all()
