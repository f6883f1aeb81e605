"""The real system as processes for the end-to-end benchmarks, built on the tests' harness.

Each context manager starts a private redis-server and the project's own commands
(``python -m shared.cli <command>``, all bound to 127.0.0.1) and always stops them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.conftest import TextSystem, make_env
from tests.harness import Proc, RedisServer, free_port, wait_ready

DB = 0


def _start(system: TextSystem, name: str, command: str, port: int | None = None) -> Proc:
    """As ``TextSystem.start``, but the process is registered before it is waited for, so a
    process that fails to come up is stopped with the others too."""
    health = free_port()
    env = {**system.env, "HEALTH_PORT": str(health), "WORKER_ID": name}
    proc = Proc(command, env, name=name)
    system.procs[name] = proc
    proc.start(wait_for_port=port if port is not None else health)
    return proc


@contextlib.contextmanager
def _redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def _system(redis: RedisServer, **overrides: str) -> Iterator[TextSystem]:
    system = TextSystem(redis, DB, make_env(redis, DB, **overrides))
    try:
        yield system
    finally:
        system.stop_all()


@contextlib.contextmanager
def gateway_only() -> Iterator[TextSystem]:
    """Redis and one gateway: nothing consumes what it ingests."""
    with _redis() as redis, _system(redis, GUARDRAILS_AGENT_HOST="") as system:
        _start(system, "gateway", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        yield system


@contextlib.contextmanager
def text_system() -> Iterator[TextSystem]:
    """Demo agent, one agent bridge and the gateway (no guardrails proxy)."""
    with _redis() as redis, _system(redis, GUARDRAILS_AGENT_HOST="") as system:
        _start(system, "demo-agent", "demo-agent", int(system.env["AGENT_PORT"]))
        _start(system, "agent-bridge", "agent-bridge")
        _start(system, "gateway", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{system.procs['agent-bridge'].env['HEALTH_PORT']}/readyz")
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        yield system


@contextlib.contextmanager
def voice_system() -> Iterator[TextSystem]:
    """Everything, as tests/conftest.py's ``voice_system`` fixture: speech services with the
    offline models, VAD worker, STT and TTS bridges, no TTS cache."""
    with _redis() as redis, _system(redis, GUARDRAILS_AGENT_HOST="",
                                    STT_PORT=str(free_port()), TTS_PORT=str(free_port()),
                                    TTS_CACHE_DIR="") as system:
        env = system.env
        _start(system, "demo-agent", "demo-agent", int(env["AGENT_PORT"]))
        _start(system, "stt-service", "stt-service", int(env["STT_PORT"]))
        _start(system, "tts-service", "tts-service", int(env["TTS_PORT"]))
        _start(system, "agent-bridge", "agent-bridge")
        _start(system, "vad-worker", "vad-worker")
        _start(system, "stt-bridge", "stt-bridge")
        _start(system, "tts-bridge", "tts-bridge")
        _start(system, "gateway", "gateway", system.gateway_port)
        for name in ("vad-worker", "stt-bridge", "tts-bridge", "agent-bridge"):
            port = system.procs[name].env["HEALTH_PORT"]
            wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        wait_ready(f"http://127.0.0.1:{env['STT_PORT']}/readyz", timeout=120)
        wait_ready(f"http://127.0.0.1:{env['TTS_PORT']}/readyz", timeout=120)
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        yield system
