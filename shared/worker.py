"""Process wrapper of a stage worker: settings, logging, health endpoints, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import structlog
import uvloop
from redis.asyncio import Redis

from shared import partition_count, topology
from shared.config import Settings
from shared.health import serve_health
from shared.keys import Stage
from shared.ownership import HandlerFactory, StageWorker
from shared.redis_io import connect, connect_sync, ping
from shared.startup import start

log = structlog.get_logger(__name__)

Setup = Callable[[Settings, Redis], AbstractAsyncContextManager[HandlerFactory]]

DEFAULT_HEALTH_PORTS = {Stage.AGENT_BRIDGE: 9101, Stage.VAD: 9102, Stage.STT_BRIDGE: 9103,
                        Stage.TTS_BRIDGE: 9104}


def consumer_name(settings: Settings) -> str:
    return settings.WORKER_ID or f"{socket.gethostname()}-{os.getpid()}"


def run_stage_worker(stage: Stage, process: str, setup: Setup) -> None:
    settings = start(process)
    partition_count.check(settings, process)
    topology.configure(settings.PARTITIONS)
    # uvloop (shipped with uvicorn[standard]): every worker spends much of its time in socket
    # writes and wake-ups, which uvloop does in C.
    uvloop.run(_serve(stage, settings, setup))


async def _serve(stage: Stage, settings: Settings, setup: Setup) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    r = connect(settings, name=process_name(stage))
    consumer = consumer_name(settings)
    async with setup(settings, r) as factory:
        keeper = connect_sync(settings, name=f"{process_name(stage)}-lease")
        # Partition reads are never retried by the client: a retry after a lost reply would
        # read on past what the lost one delivered (StageWorker._read_once).
        reader = connect(settings, name=f"{process_name(stage)}-read", retries=0)
        worker = StageWorker(r, keeper, stage, consumer, factory, lease_ms=settings.LEASE_MS,
                             reader=reader)

        async def ready() -> bool:
            return worker.ready and await ping(r)

        port = settings.HEALTH_PORT if settings.HEALTH_PORT >= 0 else DEFAULT_HEALTH_PORTS[stage]
        health = serve_health(settings.HEALTH_HOST, port, ready)
        log.info("worker started", stage=stage.value, consumer=consumer)
        try:
            await worker.run(stop)
        finally:
            if health is not None:
                await health.stop()
            log.info("worker stopped", stage=stage.value)
            await reader.aclose()
    await r.aclose()


def dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack to stderr, to see where a worker waits."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def process_name(stage: Stage) -> str:
    return stage.value.replace("_", "-")
