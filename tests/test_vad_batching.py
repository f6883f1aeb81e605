"""One gateway write, one VAD batch: Redis wakes a blocked read of many partitions with the
first one written to, and the rest of the write comes by the next read; the VAD worker takes
them all into the same model call instead of leaving most sessions an interval behind.
A real vad-worker (Silero) and a real redis-server; the audio is written the way the gateway
writes it (gateway.sessions.open_session, topology.send_audio)."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest

from gateway.sessions import close_session, open_session
from shared import topology
from tests.conftest import flushed_db
from tests.harness import Proc, RedisServer, free_port, wait_ready

DB = 13
SESSIONS = 40
WRITES = 5
WINDOW_BYTES = 1024  # one 32 ms Silero window of s16le


async def batches(client: httpx.AsyncClient, port: int) -> tuple[float, float]:
    """(batches run, sessions in them) from the worker's xrx_vad_batch_sessions histogram."""
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    count = re.search(r"^xrx_vad_batch_sessions_count (\S+)$", text, re.M)
    total = re.search(r"^xrx_vad_batch_sessions_sum (\S+)$", text, re.M)
    assert count and total, "the VAD's batch histogram is not exported"
    return float(count.group(1)), float(total.group(1))


@pytest.mark.voice
async def test_sessions_of_one_write_share_one_batch(redis_server: RedisServer) -> None:
    sids = [uuid.uuid4().hex for _ in range(SESSIONS)]
    assert len({topology.partition_of(s) for s in sids}) >= 8  # a write spans many streams
    port = free_port()
    vad = Proc("vad-worker", {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{DB}",
                              "HEALTH_PORT": str(port), "WORKER_ID": "batching-test"})
    async with flushed_db(redis_server, DB) as r, httpx.AsyncClient() as client:
        try:
            vad.start(wait_for_port=port, timeout=120)
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", 120)
            for sid in sids:
                await open_session(r, sid, "gateway-under-test", 60)
            silence = bytes(2 * WINDOW_BYTES)
            # The first write opens every session in the worker; only then is it steady.
            async with r.pipeline(transaction=False) as p:
                topology.send_audio(p, dict.fromkeys(sids, silence), None)
                await p.execute()
            await asyncio.sleep(1.0)
            runs0, seen0 = await batches(client, port)
            for _ in range(WRITES):
                async with r.pipeline(transaction=False) as p:
                    topology.send_audio(p, dict.fromkeys(sids, silence), None)
                    await p.execute()
                await asyncio.sleep(0.3)
            runs1, seen1 = await batches(client, port)
        finally:
            for sid in sids:
                await close_session(r, sid)
            vad.terminate()
    assert seen1 - seen0 == SESSIONS * WRITES, vad.logs()
    # Split, each write would take two batches (its first partition alone, then the rest);
    # one write may straddle a batch on a busy machine.
    assert runs1 - runs0 <= WRITES + 1, (runs1 - runs0, vad.logs())
