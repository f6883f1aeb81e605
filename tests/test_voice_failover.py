"""A VAD worker dying mid-utterance: another replica restores the session's checkpoint and
the utterance still arrives whole."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from shared.keys import Stage
from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, free_port, summary, wait_ready
from tests.test_failover import newest_session, owner_of
from tests.test_voice_conversation import FRAME_30MS, spoken, stream, transcripts

pytestmark = pytest.mark.voice

SENTENCE = "I would like a large pepperoni pizza with extra cheese please"


@pytest.mark.parametrize("how", ["kill", "sigterm"])
async def test_vad_failover_mid_utterance_keeps_the_utterance_whole(
        redis_server: RedisServer, how: str) -> None:
    """kill: the lease runs out and the other replica restores the last checkpoint;
    sigterm: the owner checkpoints and hands its partitions over at once."""
    env = make_env(redis_server, 6, GUARDRAILS_AGENT_HOST="", LEASE_MS="1500",
                   STT_PORT=str(free_port()), TTS_PORT=str(free_port()))
    system = TextSystem(redis_server, 6, env)
    try:
        system.start("demo-agent", "demo-agent", int(env["AGENT_PORT"]))
        system.start("stt-service", "stt-service", int(env["STT_PORT"]))
        system.start("tts-service", "tts-service", int(env["TTS_PORT"]))
        for name in ("agent-bridge", "stt-bridge", "tts-bridge"):
            system.start(name, name)
        system.start("vad-a", "vad-worker")
        system.start("vad-b", "vad-worker")
        system.start("gateway", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{env['STT_PORT']}/readyz", timeout=120)
        r = aioredis.from_url(system.redis_url)
        client = await Client.connect(system.gateway_port)
        sid = await newest_session(r, set())
        owner = await owner_of(r, sid, Stage.VAD)
        audio = spoken(SENTENCE, lead_ms=500, tail_ms=1500)
        sender = asyncio.create_task(stream(client, audio, FRAME_30MS))
        await asyncio.sleep(2.0)  # 1.5 s into the sentence
        if how == "kill":
            system.procs[owner].kill()
        else:
            await asyncio.to_thread(system.procs[owner].terminate)
        got = await client.until(lambda m: len(transcripts([m])) == 1, timeout=60)
        await sender
        said = transcripts(got)[0].lower()
        # The words before and after the crash are in one transcript.
        assert "like" in said and "pepperoni" in said and "cheese" in said, summary(got)
        assert await owner_of(r, sid, Stage.VAD) != owner
        got = await client.drain(2.0)
        assert len(transcripts(got)) == 0, summary(got)  # no second half as its own turn
        await client.close()
        await r.aclose()
    finally:
        system.stop_all()
