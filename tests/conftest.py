from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from tests.harness import Proc, RedisServer, free_port, wait_ready


@asynccontextmanager
async def flushed_db(redis: RedisServer, db: int) -> AsyncIterator[aioredis.Redis]:
    """A client of ``db`` on the test Redis, emptied first: for tests that drive Redis keys
    directly (each module its own db, beside the module-scoped systems' dbs)."""
    client = aioredis.from_url(f"redis://127.0.0.1:{redis.port}/{db}")
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@dataclass
class TextSystem:
    """Gateway, two agent-bridge replicas, guardrails proxy and demo agent, as processes."""

    redis: RedisServer
    db: int
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def gateway_port(self) -> int:
        return int(self.env["GATEWAY_PORT"])

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{self.db}"

    def start(self, name: str, command: str, port: int | None = None,
              **extra: str) -> Proc:
        proc = self.prepare(name, command, **extra)
        proc.start(wait_for_port=port if port is not None else int(proc.env["HEALTH_PORT"]))
        return proc

    def prepare(self, name: str, command: str, **extra: str) -> Proc:
        """The process :meth:`start` starts, recorded but not started yet."""
        env = {**self.env, "HEALTH_PORT": str(free_port()), "WORKER_ID": name, **extra}
        proc = Proc(command, env, name=name)
        self.procs[name] = proc  # recorded first, so one that fails to come up is stopped too
        return proc

    def start_text_pipeline(self, *, guardrails: bool) -> None:
        """Demo agent (behind guardrails or not), two agent-bridge replicas and a gateway."""
        self.start("demo-agent", "demo-agent", int(self.env["AGENT_PORT"]))
        if guardrails:
            self.start("guardrails", "guardrails", int(self.env["GUARDRAILS_AGENT_PORT"]))
        self.start("bridge-a", "agent-bridge")
        self.start("bridge-b", "agent-bridge")
        self.start("gateway", "gateway", self.gateway_port)
        wait_ready(f"http://127.0.0.1:{self.gateway_port}/readyz")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()

    def __enter__(self) -> TextSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def make_env(redis: RedisServer, db: int, **overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/{db}",
        "AGENT_HOST": "127.0.0.1",
        "AGENT_PORT": str(free_port()),
        "GUARDRAILS_AGENT_HOST": "127.0.0.1",
        "GUARDRAILS_AGENT_PORT": str(free_port()),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(free_port()),
        "AGENT_SLOW_NOTICE_MS": "1000",
        "LEASE_MS": "3000",
        "MAX_FRAME_BYTES": "65536",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def text_system(redis_server: RedisServer) -> Iterator[TextSystem]:
    with TextSystem(redis_server, 1, make_env(redis_server, 1)) as system:
        system.start_text_pipeline(guardrails=True)
        yield system


@pytest.fixture(scope="module")
def voice_system(redis_server: RedisServer) -> Iterator[TextSystem]:
    """Everything, speech included: STT and TTS services with the offline models."""
    env = make_env(redis_server, 3, GUARDRAILS_AGENT_HOST="", STT_PORT=str(free_port()),
                   TTS_PORT=str(free_port()), TTS_CACHE_DIR="")
    system = TextSystem(redis_server, 3, env)
    try:
        system.start("demo-agent", "demo-agent", int(env["AGENT_PORT"]))
        system.start("stt-service", "stt-service", int(env["STT_PORT"]))
        system.start("tts-service", "tts-service", int(env["TTS_PORT"]))
        system.start("agent-bridge", "agent-bridge")
        system.start("vad-worker", "vad-worker")
        system.start("stt-bridge", "stt-bridge")
        system.start("tts-bridge", "tts-bridge")
        system.start("gateway", "gateway", system.gateway_port)
        for name in ("vad-worker", "stt-bridge", "tts-bridge", "agent-bridge"):
            port = system.procs[name].env["HEALTH_PORT"]
            wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        wait_ready(f"http://127.0.0.1:{env['STT_PORT']}/readyz", timeout=120)
        wait_ready(f"http://127.0.0.1:{env['TTS_PORT']}/readyz", timeout=120)
        yield system
    finally:
        system.stop_all()
