"""What a Sentinel failover loses, with and without ``WAIT``.

A primary, a replica and three sentinels (real processes, tests/harness.py SentinelRedis).
Writers append to a stream as fast as Redis acknowledges, through the project's own client
(shared/redis_io.connect: Sentinel mode, retries) and, in the WAIT runs, the same
``durable()`` path turn numbers and client inputs take. The primary is killed (-9) at a
random moment; once the sentinels have promoted the replica, every write the old primary had
acknowledged is looked up on the new one. Lost = acknowledged, yet missing after the failover.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.common import BenchResult
from shared.config import Settings
from shared.redis_io import TRANSIENT, connect, durable
from tests.harness import SentinelRedis

NAME = "failover"
WRITERS = 8
STREAM = "bench:failover"


async def _trial(wait: bool, result: BenchResult, mode: str) -> None:
    cluster = SentinelRedis(down_after_ms=1000)
    try:
        cluster.start()
        await asyncio.to_thread(cluster.wait_synced)
        settings = Settings(REDIS_SENTINELS=cluster.env["REDIS_SENTINELS"],
                            REDIS_SENTINEL_MASTER=cluster.MASTER,
                            REDIS_PASSWORD=cluster.password,
                            REDIS_WAIT_REPLICAS=1 if wait else 0)
        r = connect(settings, name="bench")
        acked: set[bytes] = set()
        refused = 0
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            nonlocal refused
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    async with r.pipeline(transaction=False) as p:
                        p.xadd(STREAM, {"w": w, "i": i})
                        (entry_id,) = await durable(p)
                    acked.add(entry_id)
                except TRANSIENT:
                    refused += 1
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        await asyncio.sleep(1.0 + random.random())
        before = len(acked)
        rate_s = time.monotonic()
        await asyncio.sleep(0.5)
        result.figure(f"{mode}_writes_per_s", f"acknowledged writes/s ({mode})", "1/s").samples \
            .append((len(acked) - before) / (time.monotonic() - rate_s))
        old = cluster.primary_port()
        killed = time.monotonic()
        cluster.primary.stop()
        await asyncio.to_thread(cluster.wait_failover, old)
        result.figure("failover_s", "kill -9 -> replica promoted", "s").samples.append(
            time.monotonic() - killed)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
        present = {entry_id for entry_id, _ in await r.xrange(STREAM) or []}
        lost = len(acked - present)
        result.figure(f"{mode}_lost", f"acknowledged writes lost ({mode})", "writes") \
            .samples.append(lost)
        result.details.setdefault(f"{mode}_trials", []).append(
            {"acknowledged": len(acked), "lost": lost, "refused_during_failover": refused})
        await r.aclose()
    finally:
        cluster.cleanup()


def run(quick: bool) -> BenchResult:
    result = BenchResult(NAME)
    trials = 1 if quick else 5
    for _ in range(trials):
        for wait, mode in ((False, "no WAIT"), (True, "WAIT 1")):
            asyncio.run(_trial(wait, result, mode))
    result.notes.append(
        f"{WRITERS} writers XADD back to back through shared.redis_io (Sentinel mode, "
        "retries); 'WAIT 1' adds WAIT 1 100 to each write as durable() does for turn "
        "numbers and client inputs. Primary, replica and 3 sentinels on this machine "
        "(down-after-milliseconds 1000); kill -9 of the primary 1-2 s into the run. Writes "
        "refused during the failover were never acknowledged (the client got an error).")
    return result
