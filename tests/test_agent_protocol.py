"""The agent bridge against a scripted agent: exactly what goes over the wire, both ways."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import TextSystem, make_env
from tests.harness import Client, RedisServer, free_port, is_signal, summary, texts, wait_port

ENDED = "agent_ended_thinking"


# An xRx-convention widget (details a JSON string), and a plain string output.
WIDGET_OUTPUTS: list[Any] = [
    {"type": "order-summary", "details": json.dumps({"total": 12.5, "items": ["\u00e9t\u00e9"]}),
     "available-tools": [{"tool": "confirm_order", "arguments": []}]},
    "just a string",
]


@dataclass
class ScriptedAgent:
    """Records every request and cancel; answers by the last user message."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)

    async def run(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        task_id = f"task-{len(self.requests)}"
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"),
                    "")
        if "widgets" in last:
            stream = self._widgets()
        else:
            stream = self._long(body) if "long" in last else self._split(body, last)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"X-Task-ID": task_id})

    async def _split(self, body: dict[str, Any], last: str) -> AsyncIterator[bytes]:
        """One event cut mid-JSON and mid-line-ending across network writes."""
        answer = f"You said {last}" if body.get("action") is None else "Tool done"
        session = {**body["session"], "turns": body["session"].get("turns", 0) + 1}
        event = json.dumps({"node": "CustomerResponse", "output": answer, "session": session,
                            "messages": [{"role": "assistant", "content": answer}]})
        cut = len(event) // 2
        for piece in (b": keep-alive comment\n\n", b"data: " + event[:cut].encode(),
                      event[cut:].encode() + b"\r", b"\n\r\n"):
            yield piece
            await asyncio.sleep(0.05)

    async def _widgets(self) -> AsyncIterator[bytes]:
        for output in WIDGET_OUTPUTS:
            yield b"data: " + json.dumps({"node": "Widget", "output": output}).encode() + b"\n\n"

    async def _long(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        for i in range(100):
            yield f'data: {{"node":"CustomerResponse","output":"Long part {i}"}}\n\n'.encode()
            await asyncio.sleep(0.2)

    async def cancel(self, request: Request) -> Response:
        self.cancels.append(request.path_params["task_id"])
        return JSONResponse({"detail": "cancelled"})


@pytest.fixture(scope="module")
def scripted(redis_server: RedisServer) -> Iterator[tuple[ScriptedAgent, TextSystem]]:
    agent = ScriptedAgent()
    port = free_port()
    app = Starlette(routes=[Route("/run-reasoning-agent", agent.run, methods=["POST"]),
                            Route("/cancel-reasoning-agent/{task_id}", agent.cancel,
                                  methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),),
                              daemon=True)
    thread.start()
    wait_port(port)
    env = make_env(redis_server, 7, GUARDRAILS_AGENT_HOST="", AGENT_PORT=str(port),
                   MAX_AGENT_MESSAGES="3")
    system = TextSystem(redis_server, 7, env)
    try:
        system.start("agent-bridge", "agent-bridge")
        system.start("gateway", "gateway", system.gateway_port)
        yield agent, system
    finally:
        system.stop_all()
        server.should_exit = True
        thread.join(timeout=10)


async def turn(client: Client, text: str) -> list:
    await client.say(text)
    return await client.until(is_signal(ENDED))


async def test_split_events_parse_and_state_round_trips(
        scripted: tuple[ScriptedAgent, TextSystem]) -> None:
    agent, system = scripted
    client = await Client.connect(system.gateway_port)
    got = await turn(client, "one")
    assert texts(got) == ["You said one"], summary(got)
    first = agent.requests[-1]
    sid = first["session"]["guid"]
    assert first["session"] == {"guid": sid}  # the session dict starts as the session id
    assert first["messages"] == [{"role": "user", "content": "one"}]
    await turn(client, "two")
    second = agent.requests[-1]
    assert second["session"] == {"guid": sid, "turns": 1}  # what the agent returned
    assert second["messages"] == [{"role": "user", "content": "one"},
                                  {"role": "assistant", "content": "You said one"},
                                  {"role": "user", "content": "two"}]
    await turn(client, "three")
    # Only the last MAX_AGENT_MESSAGES (3) go to the agent.
    assert agent.requests[-1]["messages"] == [
        {"role": "user", "content": "two"}, {"role": "assistant", "content": "You said two"},
        {"role": "user", "content": "three"}]
    assert "action" not in agent.requests[-1]
    await client.close()


async def test_action_body_carries_the_parsed_parameters(
        scripted: tuple[ScriptedAgent, TextSystem]) -> None:
    agent, system = scripted
    client = await Client.connect(system.gateway_port)
    await client.send_json({"type": "action", "content": {
        "tool": "add_topping", "parameters": json.dumps({"topping": "olives", "count": 2})}})
    got = await client.until(is_signal(ENDED))
    assert texts(got) == ["Tool done"]
    assert agent.requests[-1]["action"] == {
        "type": "tool", "details": {"tool": "add_topping",
                                    "parameters": {"topping": "olives", "count": 2}}}
    await client.close()


async def test_superseded_turn_is_cancelled_at_the_agent_by_its_task_id(
        scripted: tuple[ScriptedAgent, TextSystem]) -> None:
    agent, system = scripted
    client = await Client.connect(system.gateway_port)
    await client.say("a long one")
    await client.until(lambda m: isinstance(m, dict) and m.get("content") == "Long part 1")
    long_task = f"task-{len(agent.requests)}"
    got = await turn(client, "short")
    got += await client.drain(1.0)
    assert long_task in agent.cancels
    after_cancel = got[[m.get("content") for m in got].index(ENDED) + 1:]
    assert not [t for t in texts(after_cancel) if t.startswith("Long part")], summary(got)
    assert "You said short" in texts(got)
    await client.close()


async def test_widget_outputs_reach_the_client_as_the_agent_sent_them(
        scripted: tuple[ScriptedAgent, TextSystem]) -> None:
    _, system = scripted
    client = await Client.connect(system.gateway_port)
    got = await turn(client, "show me widgets")
    widgets = [m for m in got if isinstance(m, dict) and m.get("type") == "widget"]
    # The original's shape: an object stays an object, a string stays a string.
    assert widgets == [{"user": "agent", "type": "widget", "content": output}
                       for output in WIDGET_OUTPUTS], summary(got)
    assert json.loads(widgets[0]["content"]["details"])["total"] == 12.5
    await client.close()
