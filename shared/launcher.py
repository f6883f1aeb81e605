"""``xrx up``: every process of the system on one machine, stopped together on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import structlog

from shared.config import load_settings
from shared.logs import configure_logging

log = structlog.get_logger(__name__)


@dataclass
class Service:
    command: str
    env: dict[str, str] = field(default_factory=dict)


# Order matters: services before the workers that call them, the gateway last.
SERVICES = [
    Service("demo-agent"),
    Service("guardrails"),
    Service("stt-service"),
    Service("tts-service"),
    Service("agent-bridge"),
    Service("vad-worker"),
    Service("stt-bridge"),
    Service("tts-bridge"),
    Service("gateway"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: install it (apt-get install redis-server) "
                         "or point REDIS_URL / REDIS_HOST at a running Redis")
    # AOF, fsynced every second: a redis-server that crashes and is started again on the same
    # workdir loses at most the last second of writes (no RDB snapshots: the AOF is enough).
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", "everysec",
                             "--dir", workdir],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


def run() -> None:
    settings = load_settings()
    configure_logging(settings, "launcher")
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    workdir = tempfile.mkdtemp(prefix="xrx-up-")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if not (os.environ.get("REDIS_URL") or os.environ.get("REDIS_HOST")):
            port = free_port()
            children.append(("redis", start_redis(port, workdir)))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            log.info("started a private redis-server", port=port)
        env.setdefault("GUARDRAILS_AGENT_HOST", "localhost")
        health_base = int(env.get("HEALTH_PORT_BASE", "9100"))
        for i, svc in enumerate(SERVICES):
            child_env = {**env, "HEALTH_PORT": str(health_base + i), **svc.env}
            proc = subprocess.Popen([sys.executable, "-m", "shared.cli", svc.command],
                                    env=child_env)
            children.append((svc.command, proc))
        log.info("xrx is up", gateway=f"http://localhost:{settings.GATEWAY_PORT}",
                 websocket=f"ws://localhost:{settings.GATEWAY_PORT}/api/v1/ws")
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    log.error("process exited, stopping everything", process=name,
                              code=proc.returncode)
                    stopping = True
            time.sleep(0.2)
    finally:
        _stop_all(children)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop_all(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    # Stop in reverse start order: the gateway first, Redis last.
    for _, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    log.info("all stopped")
