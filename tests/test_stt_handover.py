"""Words the STT stage holds to join the next utterance's survive the session moving: a real
stt-bridge process hands over (SIGTERM) while it holds them, a second one takes the session,
and the agent stage still gets them, once, in one message with the next utterance's."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.sessions import open_session
from shared import topology
from shared.keys import Stage
from shared.messages import AgentInput, InputKind, SpeechKind, UtteranceIn
from tests.conftest import TextSystem, flushed_db, make_env
from tests.fakes import serve
from tests.harness import RedisServer, wait_ready

DB = 12  # function-scoped, flushed per test (shared with tests/test_leases.py)
STT_PATH = "/stt"
FIRST = b"\x01\x00" * 1600  # 100 ms: "alpha words", at once
SECOND = b"\x02\x00" * 3200  # 200 ms: "bravo words", once the test lets it


@asynccontextmanager
async def slow_second_stt() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """An STT service that transcribes the first utterance at once and holds the second's
    transcript until ``release`` is set; ``second_asked`` is set when the second arrives."""
    second_asked, release = asyncio.Event(), asyncio.Event()

    async def stt(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                pcm = await ws.receive_bytes()
                if pcm == FIRST:
                    await ws.send_text("alpha words")
                else:
                    second_asked.set()
                    await release.wait()
                    await ws.send_text("bravo words")
        except (WebSocketDisconnect, RuntimeError):
            return

    async with serve(Starlette(routes=[WebSocketRoute(STT_PATH, stt)])) as url:
        yield url, second_asked, release


async def agent_inputs(r: aioredis.Redis, sid: str) -> list[str]:
    stream = topology.input_stream(Stage.AGENT_BRIDGE, sid)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(stream))
    inputs = [AgentInput.decode(fields) for _, fields in entries]
    return [i.content for i in inputs if i.kind == InputKind.TRANSCRIPT and i.session_id == sid]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_words_held_for_the_next_utterance_survive_a_hand_over(
        redis_server: RedisServer, stop: signal.Signals) -> None:
    async with flushed_db(redis_server, DB) as r, slow_second_stt() as (url, asked, release):
        port = url.rsplit(":", 1)[1]
        env = make_env(redis_server, DB, STT_HOST="127.0.0.1", STT_PORT=port,
                       STT_PATH=STT_PATH, LEASE_MS="1500")
        with TextSystem(redis_server, DB, env) as system:
            first = await asyncio.to_thread(system.start, "stt-bridge-1", "stt-bridge")
            await asyncio.to_thread(
                wait_ready, f"http://127.0.0.1:{first.env['HEALTH_PORT']}/readyz")
            sid = f"held-words-{stop.name}"
            await open_session(r, sid, "gateway-test", 600)
            now_ms = int(time.time() * 1000)
            # Two utterances 500 ms apart (audio clock): the second takes the first's words.
            for pcm, start_ms, end_ms in ((FIRST, 0, 1000), (SECOND, 1500, 2500)):
                await topology.send(r, Stage.STT_BRIDGE, UtteranceIn(
                    session_id=sid, kind=SpeechKind.UTTERANCE, pcm=pcm, start_ms=start_ms,
                    end_ms=end_ms, voice_start_ms=now_ms, voice_end_ms=now_ms))
            await asyncio.wait_for(asked.wait(), 20)  # the first's words are held now
            # Long enough for any acknowledgement of the first to reach Redis (acks go with
            # the replica's next read, within a read's block).
            await asyncio.sleep(1.0)
            assert await agent_inputs(r, sid) == []
            assert first.proc is not None
            first.proc.send_signal(stop)
            await asyncio.to_thread(first.proc.wait, 20)
            release.set()
            second = await asyncio.to_thread(system.start, "stt-bridge-2", "stt-bridge")
            await asyncio.to_thread(
                wait_ready, f"http://127.0.0.1:{second.env['HEALTH_PORT']}/readyz")
            deadline = asyncio.get_running_loop().time() + 20
            while not await agent_inputs(r, sid):
                assert asyncio.get_running_loop().time() < deadline, second.logs()
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # nothing said twice after it
            assert await agent_inputs(r, sid) == ["alpha words bravo words"], second.logs()
