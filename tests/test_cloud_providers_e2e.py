"""End to end through the real gateway, VAD worker, bridges and STT/TTS service processes, with
the services configured for cloud providers that are local fakes of their wire protocols:
Deepgram live streaming for STT, ElevenLabs stream-input for TTS. A rejected key or a quota
reaches the user as a message, and the next turn works again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from shared.messages import STT_DOWN_REPLY, TTS_DOWN_REPLY
from tests.conftest import TextSystem, make_env
from tests.fakes import API_KEY, serve
from tests.fakes.deepgram import SECONDS_PER_UTTERANCE, WORDS, FakeDeepgram
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.harness import Client, Message, RedisServer, free_port, is_signal, summary, wait_ready
from tests.speech_fixtures import silence
from tests.test_voice_conversation import FRAME_30MS, stream, transcripts

pytestmark = pytest.mark.voice

CHUNK_BYTES = 16000 * 100 // 1000 * 2  # TTS_CHUNK_MS of audio at TTS_SAMPLE_RATE
DONE = "audio_generation_done"


@dataclass
class CloudSystem:
    system: TextSystem
    deepgram: FakeDeepgram
    elevenlabs: FakeElevenLabs


@pytest.fixture(scope="module")
async def cloud(redis_server: RedisServer) -> AsyncIterator[CloudSystem]:
    deepgram, elevenlabs = FakeDeepgram(), FakeElevenLabs()
    async with serve(deepgram.app()) as dg_url, serve(elevenlabs.app()) as el_url:
        env = make_env(redis_server, 8, GUARDRAILS_AGENT_HOST="",
                       STT_PORT=str(free_port()), TTS_PORT=str(free_port()),
                       STT_PROVIDER="deepgram", DEEPGRAM_API_KEY=API_KEY,
                       DEEPGRAM_BASE_URL=dg_url, TTS_PROVIDER="elevenlabs",
                       ELEVENLABS_API_KEY=API_KEY, ELEVENLABS_BASE_URL=el_url,
                       ELEVENLABS_VOICE_ID="voice-1", TTS_CACHE_DIR="")
        system = TextSystem(redis_server, 8, env)
        try:
            system.start("demo-agent", "demo-agent", int(env["AGENT_PORT"]))
            system.start("stt-service", "stt-service", int(env["STT_PORT"]))
            system.start("tts-service", "tts-service", int(env["TTS_PORT"]))
            for name in ("agent-bridge", "vad-worker", "stt-bridge", "tts-bridge"):
                system.start(name, name)
            system.start("gateway", "gateway", system.gateway_port)
            for name in ("vad-worker", "stt-bridge", "tts-bridge", "agent-bridge"):
                port = system.procs[name].env["HEALTH_PORT"]
                await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", 120)
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{system.gateway_port}/readyz")
            yield CloudSystem(system, deepgram, elevenlabs)
        finally:
            system.stop_all()


def utterance() -> bytes:
    # Silence, so the VAD never barges in; the fake "recognises" any audio by its length.
    return silence(int(SECONDS_PER_UTTERANCE * 1000) + 300)


def is_error(content: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, dict) and m.get("type") == "error" and m["content"] == content


async def test_voice_turn_through_deepgram_and_elevenlabs(cloud: CloudSystem) -> None:
    client = await Client.connect(cloud.system.gateway_port)
    sender = asyncio.create_task(stream(client, utterance(), FRAME_30MS))
    got = await client.until(is_signal(DONE), timeout=60)
    await sender
    assert transcripts(got) == [" ".join(WORDS)], summary(got)
    chunks = [m for m in got if isinstance(m, bytes)]
    assert chunks and all(0 < len(c) <= CHUNK_BYTES and len(c) % 2 == 0 for c in chunks)
    assert cloud.elevenlabs.completed >= 1
    assert cloud.elevenlabs.requests[0]["query"] == {"model_id": "eleven_flash_v2_5",
                                                     "output_format": "pcm_16000"}
    # One Deepgram stream for this conversation (its own, not shared).
    assert cloud.deepgram.open_streams == 1
    await client.close()


async def test_rejected_stt_key_is_told_and_the_next_utterance_works(cloud: CloudSystem) -> None:
    cloud.deepgram.key = "rotated-key"  # the provider no longer accepts ours
    client = await Client.connect(cloud.system.gateway_port)
    try:
        sender = asyncio.create_task(stream(client, utterance(), FRAME_30MS))
        got = await client.until(is_error(STT_DOWN_REPLY), timeout=30)
        await sender
        cloud.deepgram.key = API_KEY
        sender = asyncio.create_task(stream(client, utterance() + utterance(), FRAME_30MS))
        got = await client.until(lambda m: isinstance(m, dict) and m.get("user") == "user",
                                 timeout=30)
        await sender
        assert transcripts(got) == [" ".join(WORDS)], summary(got)
    finally:
        cloud.deepgram.key = API_KEY
        await client.close()


async def test_tts_quota_is_told_and_the_next_reply_is_spoken(cloud: CloudSystem) -> None:
    client = await Client.connect(cloud.system.gateway_port)
    cloud.elevenlabs.fail_status = 429
    try:
        await client.send_json({"type": "text", "content": "hello", "modality": "audio"})
        got = await client.until(is_error(TTS_DOWN_REPLY), timeout=30)
        assert not [m for m in got if isinstance(m, bytes)]
        cloud.elevenlabs.fail_status = None
        await client.drain(1.0)
        await client.send_json({"type": "text", "content": "hello", "modality": "audio"})
        got = await client.until(is_signal(DONE), timeout=30)
        assert [m for m in got if isinstance(m, bytes)], summary(got)
    finally:
        cloud.elevenlabs.fail_status = None
        await client.close()
