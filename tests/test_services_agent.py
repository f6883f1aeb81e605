"""The demo agent and the guardrails proxy, served by uvicorn on real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from services.agent import create_app as create_agent_app
from services.agent.llm import SentenceSplitter, ThinkFilter
from services.agent.tasks import TaskRegistry
from services.agent.turn import LLM_DOWN_NOTICE
from services.guardrails import create_app as create_guardrails_app
from services.guardrails.rules import DEFAULT_DENY, deny_list
from shared.config import Settings
from tests.fakes import serve as serve_fake

AGENT_PATH = "/run-reasoning-agent"
CANCEL_PATH = "/cancel-reasoning-agent"
Event = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    app: Starlette

    @property
    def tasks(self) -> TaskRegistry:
        registry: TaskRegistry = self.app.state.tasks
        return registry


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[Served]:
    """Run ``app`` under uvicorn on a free localhost port for the duration of the block."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before starting")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        await task


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"LLM_BASE_URL": "", "GUARDRAILS_DENY": "", **overrides}
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def body(text: str | None = None, session: dict[str, Any] | None = None,
         action: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messages": [{"role": "user", "content": text}] if text is not None else [],
        "session": session if session is not None else {"guid": "test-session"},
    }
    if action is not None:
        out["action"] = action
    return out


def parse_sse(raw: str) -> list[Event]:
    """Strict parse: the body is nothing but ``data: {json}`` blocks separated by blank lines."""
    blocks = [b for b in raw.split("\n\n") if b]
    assert raw.endswith("\n\n") or not raw
    events = []
    for block in blocks:
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        events.append(json.loads(block[len("data: "):]))
    return events


async def turn(client: httpx.AsyncClient, url: str, payload: dict[str, Any]
               ) -> tuple[httpx.Response, list[Event]]:
    resp = await client.post(url + AGENT_PATH, json=payload)
    events = parse_sse(resp.text) if resp.status_code == 200 else []
    return resp, events


async def next_event(lines: AsyncIterator[str]) -> Event | None:
    async for line in lines:
        if line.startswith("data: "):
            event: Event = json.loads(line[len("data: "):])
            return event
    return None


async def wait_until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def spoken(events: list[Event]) -> list[str]:
    return [e["output"] for e in events if e.get("node") == "CustomerResponse"]


def widgets(events: list[Event]) -> list[dict[str, Any]]:
    """Widgets read as an xRx app reads them: ``type``, and ``details`` a JSON string."""
    out = []
    for e in events:
        if e.get("node") == "Widget":
            widget = e["output"]
            assert isinstance(widget, dict) and isinstance(widget["details"], str), widget
            out.append({**widget, "details": json.loads(widget["details"])})
    return out


# --- fixtures --------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def agent() -> AsyncIterator[Served]:
    async with serve(create_agent_app(settings())) as served:
        yield served


@pytest_asyncio.fixture(scope="module")
async def guardrails(agent: Served) -> AsyncIterator[Served]:
    port = int(agent.url.rsplit(":", 1)[1])
    app = create_guardrails_app(settings(AGENT_HOST="127.0.0.1", AGENT_PORT=port))
    async with serve(app) as served:
        yield served


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


# --- agent: the pizza script -------------------------------------------------------------


async def test_text_turn_streams_customer_responses(agent: Served,
                                                    client: httpx.AsyncClient) -> None:
    resp, events = await turn(client, agent.url, body("hello"))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    uuid.UUID(resp.headers["x-task-id"])
    assert [e["node"] for e in events] == ["CustomerResponse", "CustomerResponse"]
    assert spoken(events)[0] == "Hello! Welcome to Demo Pizza."
    final = events[-1]
    assert final["session"] == {"guid": "test-session"}
    assert final["messages"] == [{"role": "assistant", "content": " ".join(spoken(events))}]


async def test_order_summary_widget_and_confirm_action(agent: Served,
                                                       client: httpx.AsyncClient) -> None:
    _, events = await turn(client, agent.url,
                           body("I'd like a large pepperoni and two small margheritas"))
    session = events[-1]["session"]
    assert [(i["pizza"], i["size"], i["quantity"]) for i in session["order"]] == [
        ("pepperoni", "large", 1), ("margherita", "small", 2)]
    assert "Your total is $29." in spoken(events)

    _, events = await turn(client, agent.url, body("what's my order", session))
    assert events[0]["node"] == "CustomerResponse"
    [widget] = widgets(events)
    assert widget["type"] == "order-summary"
    assert widget["details"]["total"] == 29.0
    assert widget["details"]["status"] == "open"
    assert [a["tool"] for a in widget["details"]["actions"]] == [
        "confirm_order", "remove_item", "remove_item"]
    assert widget["available-tools"] == [{"tool": "confirm_order", "arguments": []},
                                         {"tool": "remove_item", "arguments": ["item"]}]
    assert events[-1]["messages"][0]["content"].startswith("Here is your order.")

    confirm = {"type": "tool", "details": {"tool": "confirm_order", "parameters": {}}}
    _, events = await turn(client, agent.url, body("what's my order", session, confirm))
    assert spoken(events)[0] == "Your order is placed."
    final = events[-1]["session"]
    assert final["order_status"] == "placed"
    assert final["order_number"] == "TESTSE-1"
    assert {i["status"] for i in final["order"]} == {"confirmed"}
    assert widgets(events)[0]["details"]["status"] == "placed"


async def test_remove_item_action_and_unknown_tool(agent: Served,
                                                   client: httpx.AsyncClient) -> None:
    _, events = await turn(client, agent.url, body("add a veggie and a hawaiian"))
    session = events[-1]["session"]
    remove = {"type": "tool", "details": {"tool": "remove_item", "parameters": {"item": 1}}}
    _, events = await turn(client, agent.url, body(None, session, remove))
    assert spoken(events)[0] == "Removed a medium veggie."
    assert [i["pizza"] for i in events[-1]["session"]["order"]] == ["hawaiian"]
    assert widgets(events)[0]["details"]["total"] == 11.5

    # Parameters as the client's JSON string and by name also work.
    by_name = {"type": "tool",
               "details": {"tool": "remove_item", "parameters": '{"item": "hawaiian"}'}}
    _, events = await turn(client, agent.url, body(None, events[-1]["session"], by_name))
    assert events[-1]["session"]["order"] == []

    unknown = {"type": "tool", "details": {"tool": "launch_rocket", "parameters": {}}}
    resp, events = await turn(client, agent.url, body(None, session, unknown))
    assert resp.status_code == 200
    assert spoken(events)[0].startswith("Sorry")
    assert events[-1]["session"] == session


async def test_menu_remove_checkout_and_help(agent: Served, client: httpx.AsyncClient) -> None:
    _, events = await turn(client, agent.url, body("show me the menu"))
    assert "Pepperoni is $9 small, $11 medium, and $13 large." in spoken(events)
    assert widgets(events)[0]["type"] == "menu"

    _, events = await turn(client, agent.url, body("add a large four cheese and a pepperoni"))
    session = events[-1]["session"]
    _, events = await turn(client, agent.url, body("remove the pepperoni", session))
    assert spoken(events) == ["Removed a medium pepperoni.", "Your total is $14."]
    _, events = await turn(client, agent.url, body("place my order", events[-1]["session"]))
    assert events[-1]["session"]["order_status"] == "placed"

    _, events = await turn(client, agent.url, body("what is the weather"))
    assert "menu" in " ".join(spoken(events))


async def test_malformed_body_is_400(agent: Served, client: httpx.AsyncClient) -> None:
    resp = await client.post(agent.url + AGENT_PATH, content=b"{not json")
    assert resp.status_code == 400
    assert "detail" in resp.json()
    resp = await client.post(agent.url + AGENT_PATH, json={"messages": "hello"})
    assert resp.status_code == 400
    assert "messages" in resp.json()["detail"]
    resp = await client.post(agent.url + AGENT_PATH, json=["messages"])
    assert resp.status_code == 400


async def test_health_endpoints(agent: Served, client: httpx.AsyncClient) -> None:
    assert (await client.get(agent.url + "/healthz")).json() == {"status": "ok"}
    assert (await client.get(agent.url + "/readyz")).status_code == 200
    assert "xrx_demo_agent_turns_total" in (await client.get(agent.url + "/metrics")).text


# --- agent: test hooks and cancellation ---------------------------------------------------


async def test_fail_hook(agent: Served, client: httpx.AsyncClient) -> None:
    resp, events = await turn(client, agent.url, body("please [fail]"))
    assert resp.status_code == 200
    assert events == [{"error": "demo failure"}]


async def test_slowly_waits_for_delay(agent: Served, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    _, events = await turn(client, agent.url, body("hello slowly [delay=0.4]"))
    assert time.monotonic() - started >= 0.4
    assert spoken(events)[0] == "Hello! Welcome to Demo Pizza."


async def test_cancel_stops_stream_early(agent: Served, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", agent.url + AGENT_PATH, json=body("go [stream=10]")) as r:
        task_id = r.headers["x-task-id"]
        lines = r.aiter_lines()
        first = await next_event(lines)
        assert first is not None and first["output"] == "Part 1 of 10."
        task = agent.tasks.task(task_id)
        assert task is not None

        cancel = await client.post(f"{agent.url}{CANCEL_PATH}/{task_id}")
        assert cancel.status_code == 200
        assert "detail" in cancel.json()

        rest = [line async for line in lines if line.startswith("data: ")]
    assert len(rest) <= 1  # at most one part raced the cancel
    await wait_until(task.done)
    assert task.cancelled()
    assert task_id not in agent.tasks

    again = await client.post(f"{agent.url}{CANCEL_PATH}/{task_id}")
    assert again.status_code == 404


async def test_cancel_during_slow_start(agent: Served, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", agent.url + AGENT_PATH,
                             json=body("tell me slowly [delay=10]")) as r:
        task_id = r.headers["x-task-id"]
        assert (await client.post(f"{agent.url}{CANCEL_PATH}/{task_id}")).status_code == 200
        assert [line async for line in r.aiter_lines() if line] == []


async def test_cancel_unknown_task_is_404(agent: Served, client: httpx.AsyncClient) -> None:
    resp = await client.post(f"{agent.url}{CANCEL_PATH}/{uuid.uuid4()}")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "task not found"}


async def test_client_disconnect_stops_turn(agent: Served) -> None:
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", agent.url + AGENT_PATH, json=body("[stream=10]")) as r:
            task_id = r.headers["x-task-id"]
            assert await next_event(r.aiter_lines()) is not None
            task = agent.tasks.task(task_id)
            assert task is not None
    await wait_until(lambda: task_id not in agent.tasks)
    await wait_until(task.done)
    assert task.cancelled()


# --- guardrails proxy -----------------------------------------------------------------


async def test_guardrails_blocks_denied_word(guardrails: Served, agent: Served,
                                             client: httpx.AsyncClient) -> None:
    payload = {"messages": [{"role": "user", "content": "a large pepperoni"},
                            {"role": "assistant", "content": "Added."},
                            {"role": "user", "content": "You are an IDIOT!"}],
               "session": {"guid": "g"}}
    resp, events = await turn(client, guardrails.url, payload)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "x-task-id" in resp.headers
    assert events == [{"guardrails": [{"rule": "deny-list", "match": "idiot"}]}]


async def test_guardrails_passes_clean_message(guardrails: Served,
                                               client: httpx.AsyncClient) -> None:
    # "stupidity" is not the word "stupid"; the old insult is not the latest user message.
    payload = {"messages": [{"role": "user", "content": "shut up"},
                            {"role": "user", "content": "no stupidity, just a menu please"}],
               "session": {"guid": "g"}}
    resp, events = await turn(client, guardrails.url, payload)
    assert resp.status_code == 200
    uuid.UUID(resp.headers["x-task-id"])
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert len(resp.headers.get_list("date")) == 1
    assert spoken(events)[0] == "Here is our menu."


async def test_guardrails_forwards_other_requests(guardrails: Served,
                                                  client: httpx.AsyncClient) -> None:
    resp = await client.post(f"{guardrails.url}{CANCEL_PATH}/{uuid.uuid4()}?x=1")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "task not found"}
    resp = await client.post(guardrails.url + AGENT_PATH, content=b"nope")
    assert resp.status_code == 400
    resp = await client.get(guardrails.url + "/no/such/path")
    assert resp.status_code == 404
    assert (await client.get(guardrails.url + "/readyz")).json() == {"status": "ready"}
    assert "xrx_guardrails_refusals_total" in (
        await client.get(guardrails.url + "/metrics")).text


async def test_cancel_through_guardrails(guardrails: Served, agent: Served,
                                         client: httpx.AsyncClient) -> None:
    async with client.stream("POST", guardrails.url + AGENT_PATH,
                             json=body("[stream=10]")) as r:
        task_id = r.headers["x-task-id"]
        lines = r.aiter_lines()
        assert await next_event(lines) is not None
        assert task_id in agent.tasks
        resp = await client.post(f"{guardrails.url}{CANCEL_PATH}/{task_id}")
        assert resp.status_code == 200
        rest = [line async for line in lines if line.startswith("data: ")]
    assert len(rest) <= 1


async def test_guardrails_client_disconnect_closes_upstream(guardrails: Served,
                                                            agent: Served) -> None:
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", guardrails.url + AGENT_PATH, json=body("[stream=10]")) as r:
            task_id = r.headers["x-task-id"]
            assert await next_event(r.aiter_lines()) is not None
            assert task_id in agent.tasks
    await wait_until(lambda: task_id not in agent.tasks)


async def test_guardrails_with_agent_down(client: httpx.AsyncClient) -> None:
    dead = settings(AGENT_HOST="127.0.0.1", AGENT_PORT=free_port(), GUARDRAILS_DENY="pineapple")
    async with serve(create_guardrails_app(dead)) as proxy:
        # Refusals never reach the agent, so they work with it down.
        _, events = await turn(client, proxy.url, body("Pineapple on pizza?"))
        assert events == [{"guardrails": [{"rule": "deny-list", "match": "pineapple"}]}]
        # The custom list replaces the default one.
        resp = await client.post(proxy.url + AGENT_PATH, json=body("you idiot"))
        assert resp.status_code == 502
        assert "detail" in resp.json()
        assert (await client.get(proxy.url + "/readyz")).status_code == 503
        assert (await client.get(proxy.url + "/healthz")).status_code == 200


def test_deny_list_rules() -> None:
    rules = deny_list([])
    assert rules.words == DEFAULT_DENY
    assert rules.check("Oh SHUT   up") is not None
    assert rules.check("that was stupid.") is not None
    assert rules.check("stupidity and dumbbells") is None
    assert rules.check("shutup") is None
    assert deny_list(["c++"]).check("I love c++ code") is not None


# --- LLM mode ---------------------------------------------------------------------------


@dataclass
class FakeLLM:
    requests: list[dict[str, Any]]
    auth: list[str]


def fake_llm_app(record: FakeLLM, chunks: list[str], pause_before_last: float) -> Starlette:
    async def completions(request: Request) -> Response:
        record.requests.append(await request.json())
        record.auth.append(request.headers.get("authorization", ""))

        async def stream() -> AsyncIterator[bytes]:
            for i, text in enumerate(chunks):
                if i == len(chunks) - 1:
                    await asyncio.sleep(pause_before_last)
                chunk = {"id": "x", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": text}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def test_llm_mode_streams_sentences(client: httpx.AsyncClient) -> None:
    record = FakeLLM([], [])
    chunks = ["<think>the user greets", " me</think>Hello there! Wel", "come to Demo",
              " Pizza. It costs $12.50", " today.\n", "What can I get you?"]
    async with serve(fake_llm_app(record, chunks, pause_before_last=0.5)) as llm:
        cfg = settings(LLM_BASE_URL=llm.url + "/v1", LLM_MODEL="tiny", LLM_API_KEY="k")
        async with serve(create_agent_app(cfg)) as agent:
            arrivals: list[float] = []
            events: list[Event] = []
            async with client.stream("POST", agent.url + AGENT_PATH,
                                     json=body("hi, who are you? [delay=0]")) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        arrivals.append(time.monotonic())
            assert spoken(events) == ["Hello there!", "Welcome to Demo Pizza.",
                                      "It costs $12.50 today.", "What can I get you?"]
            # Sentences are sent as they complete, not after the model finishes.
            assert arrivals[-1] - arrivals[0] >= 0.3
            assert events[-1]["messages"] == [
                {"role": "assistant", "content": " ".join(spoken(events))}]

            [sent] = record.requests
            assert sent["stream"] is True and sent["model"] == "tiny"
            assert sent["messages"][0]["role"] == "system"
            assert "Demo Pizza" in sent["messages"][0]["content"]
            assert sent["messages"][-1] == {"role": "user", "content": "hi, who are you?"}
            assert record.auth == ["Bearer k"]

            # Order changes stay deterministic so the session is always right.
            _, events = await turn(client, agent.url, body("add a large pepperoni"))
            assert events[-1]["session"]["order"][0]["pizza"] == "pepperoni"
            assert len(record.requests) == 1


async def test_llm_down_falls_back_to_script(client: httpx.AsyncClient) -> None:
    cfg = settings(LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    async with serve(create_agent_app(cfg)) as agent:
        resp, events = await turn(client, agent.url, body("hello"))
        assert resp.status_code == 200
        assert spoken(events)[:2] == [LLM_DOWN_NOTICE, "Hello! Welcome to Demo Pizza."]


def sse_chunk(delta: dict[str, Any]) -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def test_llm_tool_calls_become_widgets(client: httpx.AsyncClient) -> None:
    requests: list[dict[str, Any]] = []

    async def completions(request: Request) -> Response:
        requests.append(await request.json())

        async def stream() -> AsyncIterator[bytes]:
            yield sse_chunk({"role": "assistant", "content": "Here is our menu. "})
            # Tool calls stream in fragments: the name first, the arguments in pieces.
            yield sse_chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                             "function": {"name": "show_menu",
                                                          "arguments": ""}}]})
            yield sse_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
            yield sse_chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function",
                                             "function": {"name": "show_coupon",
                                                          "arguments": "{\"code\":"}}]})
            yield sse_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "\"PIZZA\"}"}}]})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    async with serve(app) as llm, serve(create_agent_app(
            settings(LLM_BASE_URL=llm.url + "/v1"))) as agent:
        _, events = await turn(client, agent.url, body("what do you have, please?"))
    assert spoken(events) == ["Here is our menu."]
    menu, coupon = widgets(events)
    assert menu["type"] == "menu" and menu["details"]["pizzas"]
    # A tool the demo does not know is passed on in the xRx form: details as a JSON string.
    assert coupon == {"type": "show_coupon", "details": {"code": "PIZZA"}, "available-tools": []}
    assert {t["function"]["name"] for t in requests[0]["tools"]} == {"show_menu", "show_order"}


@pytest.mark.parametrize("status", [401, 429])
async def test_llm_bad_key_or_quota_is_said_then_the_script_answers(
        client: httpx.AsyncClient, status: int) -> None:
    async def completions(request: Request) -> Response:
        return Response('{"error":{"message":"no"}}', status_code=status)

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    async with serve(app) as llm, serve(create_agent_app(
            settings(LLM_BASE_URL=llm.url + "/v1"))) as agent:
        _, events = await turn(client, agent.url, body("hello"))
    assert spoken(events)[:2] == [LLM_DOWN_NOTICE, "Hello! Welcome to Demo Pizza."]


async def test_cancel_aborts_the_upstream_llm_request(client: httpx.AsyncClient) -> None:
    upstream = {"sent": 0}

    async def completions(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            for i in range(100):
                upstream["sent"] += 1
                yield sse_chunk({"content": f"Sentence {i}. "})
                await asyncio.sleep(0.05)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    async with serve_fake(app) as llm_url, serve(create_agent_app(
            settings(LLM_BASE_URL=llm_url + "/v1"))) as agent:
        async with client.stream("POST", agent.url + AGENT_PATH,
                                 json=body("tell me about yourself")) as r:
            task_id = r.headers["x-task-id"]
            first = await next_event(r.aiter_lines())
            assert first is not None and first["output"] == "Sentence 0."
            assert (await client.post(f"{agent.url}{CANCEL_PATH}/{task_id}")).status_code == 200
        # The model's server saw the request go away: it stops producing at once.
        await asyncio.sleep(0.3)
        sent = upstream["sent"]
        await asyncio.sleep(0.5)
        assert upstream["sent"] == sent < 20


def test_sentence_splitting() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("One. Two") == ["One."]
    assert splitter.feed("! $3.50 is") == ["Two!"]
    assert splitter.feed(" cheap") == []
    assert splitter.flush() == ["$3.50 is cheap"]
    thoughts = ThinkFilter()
    assert thoughts.feed("<thi") == ""
    assert thoughts.feed("nk>hmm</think>Hi") == "Hi"
    assert thoughts.feed(" <") == " "
    assert thoughts.feed("3", final=True) == "<3"


@pytest.mark.parametrize("text", ["tell me slowly", "[stream=3]", "x [fail]"])
def test_hooks_parse(text: str) -> None:
    from services.agent import hooks

    h = hooks.parse(text)
    assert "[" not in h.text
    assert (h.delay_s, h.parts, h.fail) in [(3.0, None, False), (0.0, 3, False),
                                            (0.0, None, True)]
