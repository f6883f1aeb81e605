"""A process whose PARTITIONS differs from its deployment's refuses to start, naming both
values (a gateway and a worker that disagree would lose the turns of some sessions without
a word); one that agrees starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from shared import keys
from tests.conftest import flushed_db, make_env
from tests.harness import ROOT, Proc, RedisServer, free_port

DB = 12  # function-scoped, flushed per test (shared with tests/test_leases.py)


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", command], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["gateway", "agent-bridge"])
async def test_a_process_with_another_partition_count_refuses_to_start(
        redis_server: RedisServer, command: str) -> None:
    async with flushed_db(redis_server, DB) as r:
        env = make_env(redis_server, DB, HEALTH_PORT=str(free_port()))
        # The first process of the deployment records its count (the default, 32).
        first = Proc("gateway", env, name="gateway-first").start(int(env["GATEWAY_PORT"]))
        try:
            assert await r.get(keys.partition_count()) == b"32"
            refused = await asyncio.to_thread(run, command, {**env, "PARTITIONS": "16",
                                                             "GATEWAY_PORT": str(free_port())})
        finally:
            first.terminate()
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "PARTITIONS=16" in refused.stderr and "use 32" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert await r.get(keys.partition_count()) == b"32"


async def test_a_process_that_agrees_starts(redis_server: RedisServer) -> None:
    async with flushed_db(redis_server, DB) as r:
        await r.set(keys.partition_count(), 8)
        env = make_env(redis_server, DB, PARTITIONS="8", HEALTH_PORT=str(free_port()))
        bridge = Proc("agent-bridge", env, name="agent-bridge-agrees").start(
            int(env["HEALTH_PORT"]))
        bridge.terminate()
        assert "PARTITIONS" not in bridge.logs()
