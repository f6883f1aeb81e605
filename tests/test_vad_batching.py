"""One gateway write, one VAD batch: Redis wakes a blocked read of many partitions with the
first one written to, and the rest of the write comes by the next read; the VAD worker takes
them all into the same model call instead of leaving most sessions an interval behind.
A wide batch runs in two lanes (vad_worker/batcher.py lanes), and every session's
utterances still come out whole, once, whichever lane it was in.
A real vad-worker (Silero) and a real redis-server; the audio is written the way the gateway
writes it (gateway.sessions.open_session, topology.send_audio)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from gateway.sessions import close_session, open_session
from shared import keys, topology
from shared.keys import Stage
from shared.messages import SpeechKind, UtteranceIn
from shared.ownership import Reads
from shared.pacing import Pacing
from tests.conftest import flushed_db
from tests.harness import Proc, RedisServer, free_port, wait_ready
from tests.speech_fixtures import silence, synthesize_pcm16k
from vad_worker.batcher import SPLIT_FROM_SESSIONS, VadBatcher, lanes, may_end_now
from vad_worker.events import VadEvent
from vad_worker.state import SessionVadState

DB = 13
SESSIONS = 40
WRITES = 5
WINDOW_BYTES = 1024  # one 32 ms Silero window of s16le


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"the VAD does not export {name}"
    return float(found.group(1))


async def batches(client: httpx.AsyncClient, port: int) -> tuple[float, float]:
    """(batches run, sessions in them) from the worker's xrx_vad_batch_sessions histogram."""
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return (metric(text, "xrx_vad_batch_sessions_count"),
            metric(text, "xrx_vad_batch_sessions_sum"))


@asynccontextmanager
async def running_vad(redis_server: RedisServer, sids: list[str],
                     name: str) -> AsyncIterator[tuple[Redis, httpx.AsyncClient, int, Proc]]:
    """A real vad-worker with ``sids`` open as the gateway opens sessions: (its Redis client,
    an HTTP client, its health port, the process); the sessions are closed afterwards."""
    port = free_port()
    vad = Proc("vad-worker", {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{DB}",
                              "HEALTH_PORT": str(port), "WORKER_ID": name})
    async with flushed_db(redis_server, DB) as r, httpx.AsyncClient() as client:
        try:
            vad.start(wait_for_port=port, timeout=120)
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", 120)
            for sid in sids:
                await open_session(r, sid, "gateway-under-test", 60)
            yield r, client, port, vad
        finally:
            for sid in sids:
                await close_session(r, sid)
            vad.terminate()


@pytest.mark.voice
async def test_sessions_of_one_write_share_one_batch(redis_server: RedisServer) -> None:
    sids = [uuid.uuid4().hex for _ in range(SESSIONS)]
    assert len({topology.partition_of(s) for s in sids}) >= 8  # a write spans many streams
    async with running_vad(redis_server, sids, "batching-test") as (r, client, port, vad):
        quiet = bytes(2 * WINDOW_BYTES)
        # The first write opens every session in the worker; only then is it steady.
        async with r.pipeline(transaction=False) as p:
            topology.send_audio(p, dict.fromkeys(sids, quiet), None)
            await p.execute()
        await asyncio.sleep(1.0)
        runs0, seen0 = await batches(client, port)
        for _ in range(WRITES):
            async with r.pipeline(transaction=False) as p:
                topology.send_audio(p, dict.fromkeys(sids, quiet), None)
                await p.execute()
            await asyncio.sleep(0.3)
        runs1, seen1 = await batches(client, port)
    assert seen1 - seen0 == SESSIONS * WRITES, vad.logs()
    # Split, each write would take two batches (its first partition alone, then the rest);
    # one write may straddle a batch on a busy machine.
    assert runs1 - runs0 <= WRITES + 1, (runs1 - runs0, vad.logs())


class _Engine:
    """The batcher's view of the VAD engine: records who each model call served."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(bind_thread=lambda: None)
        self.calls: list[list[str]] = []

    def process(self, frames: list[tuple[SessionVadState, bytes]]) -> list[VadEvent]:
        self.calls.append([st.session_id for st, _ in frames])
        return []


class _Session:
    """The batcher's view of a VAD session: audio waiting, nothing to publish."""

    def __init__(self, sid: str, reads: Reads) -> None:
        self.sid, self.state = sid, SessionVadState(session_id=sid)
        self.acker = SimpleNamespace(reads=reads, ack=lambda *ids: None)
        self.closed = self.leaving = False

    def take_pending(self) -> tuple[list[bytes], bytes]:
        return [b"1-0"], bytes(WINDOW_BYTES)

    def publish(self, *_: object) -> list[bytes]:
        return []


async def test_a_batch_waits_for_the_read_that_brings_the_rest_of_the_write(
        redis_server: RedisServer) -> None:
    """The read that wakes the worker brings one partition of a gateway write; the rest comes
    with the next read, however long that takes on a busy worker: the batch waits for it,
    and for no read after one that brings nothing."""
    reads, engine = Reads(), _Engine()
    async with flushed_db(redis_server, DB) as r:
        batcher = VadBatcher(r, cast(Any, engine), Pacing.from_ms(40, 80))
        try:
            first, rest = _Session("first", reads), _Session("rest", reads)
            assert not reads.begin()
            batcher.submit(cast(Any, first))
            reads.end()
            assert reads.begin()  # the batcher asked: this read does not block
            await asyncio.sleep(0.012)  # a busy worker: the reply takes a while
            batcher.submit(cast(Any, rest))
            reads.end()
            assert reads.begin()  # it brought audio: the next one does not block either
            await asyncio.sleep(0.002)
            assert engine.calls == []
            reads.end()  # nothing more
            for _ in range(100):
                if engine.calls:
                    break
                await asyncio.sleep(0.005)
            assert engine.calls == [["first", "rest"]]
        finally:
            await batcher.aclose()


def state(*, triggered: bool = False, silence_start: int = -1,
          speech_started: bool = False) -> SessionVadState:
    return SessionVadState(session_id="s", triggered=triggered, silence_start=silence_start,
                           speech_started=speech_started)


def test_sessions_whose_voice_may_end_now() -> None:
    assert not may_end_now(state())  # silent
    assert may_end_now(state(triggered=True))  # voice too short to barge in yet
    assert not may_end_now(state(triggered=True, speech_started=True))  # talking on
    assert may_end_now(state(triggered=True, speech_started=True, silence_start=100))


def test_wide_batches_split_in_two_lanes_urgent_first() -> None:
    urgent, quiet = state(triggered=True, silence_start=5), state()
    wide = [quiet] * (SPLIT_FROM_SESSIONS - 2) + [urgent, urgent]
    assert lanes(wide, lambda s: s) == [[urgent, urgent], [quiet] * (SPLIT_FROM_SESSIONS - 2)]
    assert lanes(wide[1:], lambda s: s) == [wide[1:]]  # too narrow: one model call
    assert lanes([quiet] * SPLIT_FROM_SESSIONS, lambda s: s) == [[quiet] * SPLIT_FROM_SESSIONS]
    assert lanes([urgent] * SPLIT_FROM_SESSIONS, lambda s: s) == [[urgent] * SPLIT_FROM_SESSIONS]


@pytest.mark.voice
async def test_split_batches_keep_every_utterance_whole(redis_server: RedisServer) -> None:
    """Half the sessions speak a sentence while the other half stay silent, in real-time
    80 ms writes: batches split (the speakers' voices start, then pause), and every speaker's
    utterance reaches the STT stage once, whole; no silent session sends one."""
    sids = [uuid.uuid4().hex for _ in range(SPLIT_FROM_SESSIONS + 40)]
    speakers = set(sids[::2])
    speech = synthesize_pcm16k("What is on the menu")
    clip = silence(300) + speech + silence(1200)
    step = 2560  # 80 ms
    async with running_vad(redis_server, sids, "lanes-test") as (r, client, port, vad):
        for at in range(0, len(clip), step):
            frames = {sid: (clip[at:at + step] if sid in speakers else silence(80))
                      for sid in sids}
            async with r.pipeline(transaction=False) as p:
                topology.send_audio(p, frames, None)
                await p.execute()
            await asyncio.sleep(0.08)
        await asyncio.sleep(1.0)
        splits = metric((await client.get(f"http://127.0.0.1:{port}/metrics")).text,
                        "xrx_vad_split_batches_total")
        utterances: dict[str, list[UtteranceIn]] = {}
        for n in range(topology.partitions()):
            stream = keys.stage_partition(Stage.STT_BRIDGE, n)
            for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]],
                                  await r.xrange(stream)):
                entry = UtteranceIn.decode(fields)
                if entry.kind == SpeechKind.UTTERANCE:
                    utterances.setdefault(entry.session_id, []).append(entry)
    assert splits > 0, vad.logs()
    assert set(utterances) == speakers, vad.logs()
    for sid, found in utterances.items():
        assert len(found) == 1, (sid, len(found))
        # The whole sentence (the VAD adds pre-roll and a tail, and trims nothing voiced).
        assert len(found[0].pcm) >= len(speech) * 0.9, (sid, len(found[0].pcm), len(speech))
