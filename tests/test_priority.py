"""CPU_NICE: a process runs at the niceness it is configured with, every thread of it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import TextSystem, make_env
from tests.harness import RedisServer, free_port, wait_ready

DB = 14


def thread_niceness(pid: int) -> dict[int, int]:
    """Each thread's niceness, read from /proc (field 19 of its stat line)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        # The command name (field 2) is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = int(fields[16])
    return out


@pytest.fixture(scope="module")
def system(redis_server: RedisServer) -> Iterator[TextSystem]:
    with TextSystem(redis_server, DB, make_env(redis_server, DB)) as system:
        yield system


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_vad_worker_runs_every_thread_at_its_cpu_nice(system: TextSystem) -> None:
    # The vad-worker runs its model in a thread of its own: the niceness must reach it too.
    proc = system.start("vad-nice", "vad-worker", CPU_NICE="7")
    wait_ready(f"http://127.0.0.1:{proc.env['HEALTH_PORT']}/readyz", timeout=60)
    assert proc.proc is not None
    niceness = thread_niceness(proc.proc.pid)
    assert len(niceness) > 1
    assert set(niceness.values()) == {7}, niceness
    assert "cpu niceness set" in proc.log_path.read_text()


def test_gateway_runs_at_its_cpu_nice_and_others_as_started(system: TextSystem) -> None:
    gateway = system.start("gateway-nice", "gateway", system.gateway_port, CPU_NICE="3")
    bridge = system.start("bridge-plain", "agent-bridge")
    assert gateway.proc is not None and bridge.proc is not None
    assert psutil.Process(gateway.proc.pid).nice() == 3
    assert psutil.Process(bridge.proc.pid).nice() == psutil.Process().nice()


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root may lower its niceness; dropping that needs setpriv")
def test_a_process_that_may_not_lower_its_niceness_says_so_and_serves(
        system: TextSystem) -> None:
    # Without root or CAP_SYS_NICE (dropped here from what a root test run may pass on), a
    # lower niceness is refused by the kernel: the gateway warns and serves anyway.
    port = free_port()
    gateway = system.prepare("gateway-no-cap", "gateway", GATEWAY_PORT=str(port), CPU_NICE="-5")
    if os.geteuid() == 0:
        gateway.argv_prefix = ["setpriv", "--bounding-set=-sys_nice"]
    gateway.start(wait_for_port=port)
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    assert gateway.proc is not None
    assert psutil.Process(gateway.proc.pid).nice() == psutil.Process().nice()
    assert "CPU_NICE not applied" in gateway.log_path.read_text()
