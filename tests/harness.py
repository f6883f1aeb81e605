"""Real processes for the tests: a private redis-server and the project's own commands."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from shared import keys, topology
from shared.keys import Stage
from shared.messages import session_of

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = Path(os.environ.get("XRX_TEST_LOGS", tempfile.gettempdir())) / "xrx-test-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class RedisServer:
    """A private redis-server on a free port, which a test may kill and restart."""

    def __init__(self, *, password: str = "", args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="xrx-redis-")
        self.password, self.args = password, args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (.ci/run installs it)"
        auth = ("--requirepass", self.password, "--masterauth", self.password) \
            if self.password else ()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *auth, *self.args],
            stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelRedis:
    """A primary, a replica of it and three sentinels watching them: real processes.

    Sentinels notice a dead primary after ``down_after_ms`` and promote the replica; clients
    find the primary by asking them (REDIS_SENTINELS, REDIS_SENTINEL_MASTER).
    """

    MASTER = "xrx"

    def __init__(self, *, password: str = "s3cret", down_after_ms: int = 1000) -> None:
        self.password = password
        # No 5 s pause before the first full sync (the default lets more replicas join it).
        fast = ("--repl-diskless-sync-delay", "0")
        self.primary = RedisServer(password=password, args=fast)
        self.replica = RedisServer(
            password=password, args=(*fast, "--replicaof", "127.0.0.1", str(self.primary.port)))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix="xrx-sentinel-")
        self.down_after_ms = down_after_ms
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
                "REDIS_SENTINEL_MASTER": self.MASTER, "REDIS_PASSWORD": self.password,
                "REDIS_URL": "", "REDIS_HOST": ""}

    def start(self) -> None:
        exe = shutil.which("redis-sentinel") or shutil.which("redis-server")
        assert exe, "redis-server is not installed (.ci/run installs it)"
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = Path(self.dir) / f"sentinel-{port}.conf"  # sentinels rewrite their config
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {self.dir}",
                f"requirepass {self.password}",
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2",
                f"sentinel auth-pass {self.MASTER} {self.password}",
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}",
                f"sentinel failover-timeout {self.MASTER} 5000",
                f"sentinel parallel-syncs {self.MASTER} 1", ""]))
            self.sentinels.append(subprocess.Popen([exe, str(conf), "--sentinel"],
                                                   stdout=subprocess.DEVNULL))
        for port in self.sentinel_ports:
            wait_port(port)

    def ask(self, *command: str) -> str:
        """A sentinel's answer to ``command`` (redis-cli against the first one alive)."""
        for port in self.sentinel_ports:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", self.password,
                 *command], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout
        raise RuntimeError(f"no sentinel answered {command}")

    def primary_port(self) -> int:
        """The port of the node the sentinels currently name as primary."""
        return int(self.ask("SENTINEL", "get-master-addr-by-name", self.MASTER).split()[1])

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every sentinel knows it and the other sentinels
        (a failover needs both)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.ask("SENTINEL", "master", self.MASTER).split()
            fields = dict(zip(info[::2], info[1::2], strict=False))
            link = subprocess.run(
                ["redis-cli", "-p", str(self.replica.port), "--no-auth-warning", "-a",
                 self.password, "INFO", "replication"], capture_output=True, text=True).stdout
            if (fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"
                    and "master_link_status:up" in link):
                return
            time.sleep(0.2)
        raise TimeoutError("the replica or the sentinels never got in touch")

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.primary_port() != old_port:
                    return
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the sentinels never promoted the replica")

    def cleanup(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.primary.cleanup()
        self.replica.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


class Proc:
    """One `xrx <command>` process with its own environment and log file."""

    def __init__(self, command: str, env: dict[str, str], name: str | None = None) -> None:
        self.command, self.name = command, name or command
        self.env = {**os.environ, "LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv_prefix: list[str] = []  # a wrapper to run it under (setpriv, say)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}-{os.getpid()}-{time.time_ns()}.log"

    def start(self, wait_for_port: int | None = None, timeout: float = 60.0) -> Proc:
        log = open(self.log_path, "wb")  # the process keeps it open
        self.proc = subprocess.Popen([*self.argv_prefix, sys.executable, "-m", "shared.cli",
                                      self.command],
                                     env=self.env, cwd=ROOT, stdout=log, stderr=log)
        if wait_for_port is not None:
            try:
                wait_port(wait_for_port, timeout)
            except TimeoutError:
                raise RuntimeError(f"{self.name} did not start:\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


# --- ownership, as Redis records it ---------------------------------------------------------


async def holder_of(r: Any, sid: str, stage: Stage) -> str | None:
    """The replica of ``stage`` holding the partition of session ``sid``, if any."""
    raw = await r.get(keys.partition_lease(stage, topology.partition_of(sid)))
    return cast(bytes, raw).decode().rsplit(" ", 1)[0] if raw else None


async def lease_counts(r: Any, stage: Stage) -> dict[str, int]:
    """Partitions of ``stage`` held per replica."""
    counts: dict[str, int] = {}
    for n in range(topology.partitions()):
        raw = await r.get(keys.partition_lease(stage, n))
        if raw:
            name = cast(bytes, raw).decode().rsplit(" ", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


async def entries_of(r: Any, stream: str, sid: str) -> list[bytes]:
    """Ids of the entries of session ``sid`` still in a partition stream."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(stream))
    return [i for i, f in entries if session_of(f) == sid]


# --- a client --------------------------------------------------------------------------

# A decoded JSON message (dict) or a binary audio frame (bytes).
Message = Any


class Client:
    """A real WebSocket client that records everything the server sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[Message] = []

    @classmethod
    async def connect(cls, port: int, key: str | None = "123456", *, query: bool = False,
                      **kwargs: Any) -> Client:
        url = f"ws://127.0.0.1:{port}/api/v1/ws"
        headers = {}
        if key is not None and query:
            url += f"?api_key={key}"
        elif key is not None:
            headers["x-api-key"] = key
        ws = await websockets.connect(url, additional_headers=headers, max_size=None, **kwargs)
        return cls(ws)

    async def send_json(self, obj: Any) -> None:
        await self.ws.send(json.dumps(obj))

    async def say(self, text: str) -> None:
        await self.send_json({"type": "text", "content": text})

    async def next(self, timeout: float = 20.0) -> Message:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        msg: Message = raw if isinstance(raw, bytes) else json.loads(raw)
        self.received.append(msg)
        return msg

    async def until(self, pred: Callable[[Message], bool], timeout: float = 30.0) -> list[Message]:
        """Receive until a message matches; return everything received on the way."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; got {summary(got)}")
            msg = await self.next(left)
            got.append(msg)
            if pred(msg):
                return got

    async def drain(self, seconds: float) -> list[Message]:
        """Everything that arrives within ``seconds``."""
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.next(left))
            except TimeoutError:
                break
        return got

    async def close(self) -> None:
        await self.ws.close()


def is_signal(content: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, dict) and m.get("content") == content


def texts(messages: list[Message], user: str = "agent") -> list[str]:
    return [m["content"] for m in messages
            if isinstance(m, dict) and m.get("user") == user and m.get("type") in ("audio", "text")]


def summary(messages: list[Message]) -> list[Any]:
    """Messages with audio runs folded, readable in an assertion message."""
    out: list[Any] = []
    for m in messages:
        if isinstance(m, bytes):
            if out and isinstance(out[-1], list):
                out[-1][0] += 1
                out[-1][1] += len(m)
            else:
                out.append([1, len(m)])
        else:
            out.append(m)
    return [f"<{n} audio chunks, {b} bytes>" if isinstance(x, list) else x
            for x in out for n, b in [x if isinstance(x, list) else (0, 0)]]
