"""Every long-lived process starts the same way (shared/startup.py): with LOG_FORMAT=json (as
in production; the harness sets it) each line it writes, its own and uvicorn's, is a JSON
object naming the process, and CPU_NICE applies. The reference agent and the guardrails
proxy once skipped that start and logged readable text to stdout instead."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from shared.config import Settings
from tests.conftest import TextSystem, make_env
from tests.harness import Proc, RedisServer, free_port

DB = 13


@pytest.fixture(scope="module")
def system(redis_server: RedisServer) -> Iterator[TextSystem]:
    with TextSystem(redis_server, DB, make_env(redis_server, DB)) as system:
        yield system


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    assert lines, "the process wrote no log lines"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{proc.name} wrote a line that is not JSON: {line!r}")
    return parsed


def events(lines: list[dict[str, Any]]) -> list[str]:
    return [str(line.get("event", "")) for line in lines]


def test_demo_agent_logs_json_lines_naming_it(system: TextSystem) -> None:
    port = int(system.env["AGENT_PORT"])
    agent = system.start("demo-agent-logs", "demo-agent", port, CPU_NICE="4")
    assert agent.proc is not None
    assert psutil.Process(agent.proc.pid).nice() == 4
    # A request the agent itself logs (its own logger, not uvicorn's).
    path = system.env.get("AGENT_PATH", Settings.model_fields["AGENT_PATH"].default)
    bad = httpx.post(f"http://127.0.0.1:{port}{path}", content=b"{not json", timeout=10)
    assert bad.status_code == 400
    with httpx.stream("POST", f"http://127.0.0.1:{port}{path}", json={
            "messages": [{"role": "user", "content": "a large pepperoni"}],
            "session": {"guid": "logged-session"}}, timeout=30) as turn:
        assert turn.status_code == 200
        turn.read()
    agent.terminate()
    lines = log_lines(agent)
    assert {line.get("process") for line in lines} == {"demo-agent"}
    said = events(lines)
    assert "agent_started" in said
    assert "agent_bad_request" in said
    assert any("Uvicorn running" in e for e in said), said
    started = [line for line in lines if line.get("event") == "agent_turn_started"]
    assert [line.get("session_id") for line in started] == ["logged-session"]


def test_guardrails_logs_json_lines_naming_it(system: TextSystem) -> None:
    port = int(system.env["GUARDRAILS_AGENT_PORT"])
    proxy = system.start("guardrails-logs", "guardrails", port, CPU_NICE="4")
    assert proxy.proc is not None
    assert psutil.Process(proxy.proc.pid).nice() == 4
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    path = system.env.get("AGENT_PATH", Settings.model_fields["AGENT_PATH"].default)
    for words in ("You are an IDIOT!", "a large pepperoni"):  # refused; then no agent there
        httpx.post(f"http://127.0.0.1:{port}{path}", timeout=10, json={
            "messages": [{"role": "user", "content": words}],
            "session": {"guid": "guarded-session"}})
    proxy.terminate()
    lines = log_lines(proxy)
    assert {line.get("process") for line in lines} == {"guardrails"}
    assert any("Uvicorn running" in e for e in events(lines)), events(lines)
    told = {line.get("event"): line.get("session_id") for line in lines}
    assert told.get("guardrails_refused") == "guarded-session", told
    assert told.get("agent_unreachable") == "guarded-session", told


def test_a_worker_without_redis_says_so_once_naming_itself(system: TextSystem) -> None:
    # Its lease keeper, a thread of its own, retries every LEASE_MS / 4: one warning per
    # outage, with the process's name like every other line.
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LEASE_MS": "1000"}
    worker = system.prepare("bridge-no-redis", "agent-bridge", **env).start()
    time.sleep(4.0)
    worker.terminate()
    lines = log_lines(worker)
    assert {line.get("process") for line in lines} == {"agent-bridge"}
    assert events(lines).count("lease renewal failed") == 1, events(lines)
