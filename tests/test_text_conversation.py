"""A text conversation end to end: real gateway, agent bridges, guardrails, agent and Redis."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import keys, topology
from shared.keys import Stage
from tests.conftest import TextSystem, make_env
from tests.harness import (
    Client,
    entries_of,
    free_port,
    holder_of,
    is_signal,
    lease_counts,
    summary,
    texts,
    wait_ready,
)

STARTED, ENDED = "agent_started_thinking", "agent_ended_thinking"


def signals(messages: list) -> list[str]:
    return [m["content"] for m in messages
            if isinstance(m, dict) and m.get("type") == "action"]


async def turn(client: Client, text: str, timeout: float = 30) -> list:
    await client.say(text)
    return await client.until(is_signal(ENDED), timeout)


# --- auth -------------------------------------------------------------------------------


async def test_api_key_in_header_is_accepted(text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port, "123456")
    got = await turn(client, "hello")
    assert texts(got)
    await client.close()


async def test_api_key_in_query_is_accepted_for_browsers(text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port, "123456", query=True)
    got = await turn(client, "hello")
    assert texts(got)
    await client.close()
    # The key in the URL never reaches the logs.
    logs = text_system.procs["gateway"].log_path.read_text()
    assert "api_key=***" in logs
    assert "api_key=123456" not in logs


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong-key", 403)])
async def test_missing_or_wrong_key_is_refused_before_accept(
        text_system: TextSystem, key: str | None, status: int) -> None:
    with pytest.raises(InvalidStatus) as err:
        await Client.connect(text_system.gateway_port, key)
    assert err.value.response.status_code == status


# --- conversation -----------------------------------------------------------------------


async def test_text_turn_has_paired_thinking_signals_around_the_reply(
        text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    got = await turn(client, "What is on the menu?")
    kinds = signals(got)
    assert kinds == [STARTED, ENDED], summary(got)
    assert got[0] == {"user": "agent", "content": STARTED, "type": "action"}
    # A client that did not ask for session ids sees the original's messages only: no
    # session message, no "id" field (the resume extension is opt-in).
    assert all(set(m) == {"user", "content", "type"} for m in got), summary(got)
    replies = texts(got)
    assert replies and "pepperoni" in " ".join(replies).lower()
    # Replies come between the two signals, as the original's "audio"-typed agent text.
    reply_msgs = [m for m in got if isinstance(m, dict) and m.get("type") == "audio"]
    assert all(m["user"] == "agent" for m in reply_msgs)
    await client.close()


async def test_conversation_state_survives_between_turns_and_widget_action_works(
        text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    await turn(client, "I'd like a large pepperoni")
    got = await turn(client, "what's my order")
    widgets = [m for m in got if isinstance(m, dict) and m.get("type") == "widget"]
    assert widgets, summary(got)
    # The original's shape: content is the agent's object, read as xRx apps read it.
    widget = widgets[0]["content"]
    assert isinstance(widget, dict), widgets[0]
    assert widget["type"] == "order-summary"
    details = json.loads(widget["details"])
    assert "pepperoni" in json.dumps(details["items"]).lower()
    assert {"tool": "confirm_order", "arguments": []} in widget["available-tools"]
    # The widget's button sends an action whose parameters are a JSON string.
    await client.send_json({"type": "action", "modality": "text",
                            "content": {"tool": "confirm_order", "parameters": "{}"}})
    got = await client.until(is_signal(ENDED))
    assert signals(got) == [STARTED, ENDED]
    assert any("order" in t.lower() for t in texts(got)), summary(got)
    await client.close()


async def test_guardrails_refuse_a_denied_message(text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    got = await turn(client, "you are stupid")
    assert texts(got) == ["Sorry I am not going to respond to that. Try again but a bit nicer."]
    got = await turn(client, "hello")  # the session keeps working
    assert texts(got) and "nicer" not in texts(got)[0]
    await client.close()


async def test_slow_agent_gets_a_one_moment_notice_first(text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    got = await turn(client, "tell me the menu slowly [delay=3]")
    replies = texts(got)
    assert replies[0] == "One moment please...", summary(got)
    assert len(replies) >= 2
    await client.close()


async def test_new_message_cancels_a_long_turn_and_nothing_stale_arrives(
        text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    await client.say("count for me [stream=10]")
    first = await client.until(lambda m: isinstance(m, dict) and "Part 1" in m.get("content", ""))
    await client.say("what is on the menu?")
    got = await client.until(lambda m: isinstance(m, dict) and m.get("type") == "audio"
                             and "pepperoni" in m.get("content", "").lower())
    got += await client.until(is_signal(ENDED))
    got += await client.drain(3.0)  # the cancelled stream would have gone on for seconds
    everything = first + got
    assert not [t for t in texts(got) if t.startswith("Part ")], summary(got)
    # Two turns, each opened and closed exactly once, in order.
    assert signals(everything).count(STARTED) == 2
    assert signals(everything).count(ENDED) == 2
    sig = [s for s in signals(everything) if s in (STARTED, ENDED)]
    assert sig == [STARTED, ENDED, STARTED, ENDED], summary(everything)
    await client.close()


async def test_initial_response_is_sent_once_when_configured(text_system: TextSystem) -> None:
    port = free_port()
    text_system.start("gateway-initial", "gateway", port, GATEWAY_PORT=str(port),
                      INITIAL_RESPONSE="Welcome to Pizza Place!")
    try:
        client = await Client.connect(port)
        first = await client.next()
        assert first == {"user": "agent", "content": "Welcome to Pizza Place!", "type": "text"}
        got = await turn(client, "hello")
        assert "Welcome to Pizza Place!" not in texts(got)
        await client.close()
    finally:
        text_system.procs.pop("gateway-initial").terminate()


# --- bad input --------------------------------------------------------------------------

BAD_FRAMES = [
    ("{not json", "invalid JSON"),
    ('["a list"]', "JSON object"),
    ('{"content": "hi"}', "missing 'type'"),
    ('{"type": "dance", "content": "hi"}', "unknown type 'dance'"),
    ('{"type": "text", "content": 42}', "must be a string"),
    ('{"type": "text", "content": "hi", "modality": "smell"}', "unknown modality"),
    ('{"type": "action", "content": "confirm"}', "must be an object"),
    ('{"type": "action", "content": {"parameters": "{}"}}', "content.tool"),
    ('{"type": "action", "content": {"tool": "x", "parameters": "{oops"}}', "not valid JSON"),
    ("   ", "empty message"),
    # Hostile JSON: every kind gets an error and the connection stays open.
    # Past the parser's recursion limit, under MAX_TEXT_BYTES (16 KiB).
    ("[" * 8_000 + "]" * 8_000, "nested deeper"),
    ('{"type": "text", "content": ' + "[" * 40 + "]" * 40 + "}", "nested deeper"),
    ('{"type": "action", "content": {"tool": "x", "parameters": "'
     + "[" * 50 + "]" * 50 + '"}}', "nested deeper"),
    ('{"type": "text", "content": "hi", "n": ' + "9" * 5000 + "}", "digits"),
    ('{"type": "text", "content": "\\ud800 lone surrogate"}', "surrogate"),
    ('{"type": "text", "content": "hi", "k": {"\\udfff": 1}}', "surrogate"),
    ('{"type": "text", "content": "hi", "x": NaN}', "NaN"),
    ('{"type": "action", "content": {"tool": "x", "parameters": {"a": 1e999}}}', "out of range"),
    ('{"type": "action", "content": {"tool": "x", "parameters": "{\\"a\\": Infinity}"}}',
     "Infinity"),
]


async def test_bad_frames_get_an_error_and_the_session_keeps_working(
        text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    for frame, expected in BAD_FRAMES:
        await client.ws.send(frame)
        msg = await client.next(5)
        assert isinstance(msg, dict) and msg["user"] == "system" and msg["type"] == "error"
        assert expected in msg["content"], (frame, msg)
    await client.ws.send(b"\x01\x02\x03")  # odd length: not whole 16-bit samples
    msg = await client.next(5)
    assert isinstance(msg, dict) and msg["type"] == "error" and "odd length" in msg["content"]
    got = await turn(client, "hello")
    assert texts(got)
    await client.close()


async def test_plain_typed_text_is_a_user_message(text_system: TextSystem) -> None:
    """The xRx React client's sendMessage(text) sends what the user typed, unchanged."""
    client = await Client.connect(text_system.gateway_port)
    await client.ws.send("  What is on the menu?")
    got = await client.until(is_signal(ENDED))
    assert signals(got) == [STARTED, ENDED], summary(got)
    assert "pepperoni" in " ".join(texts(got)).lower()
    assert not [m for m in got if isinstance(m, dict) and m.get("type") == "error"]
    await client.close()


async def test_oversized_frame_closes_with_1009(text_system: TextSystem) -> None:
    client = await Client.connect(text_system.gateway_port)
    await client.ws.send(b"\x00" * (65536 + 2))
    with pytest.raises(ConnectionClosed) as err:
        await client.next(5)
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009


# --- scale-out and cleanup --------------------------------------------------------------


async def test_two_bridge_replicas_share_sessions_and_no_turn_runs_twice(
        text_system: TextSystem) -> None:
    clients = [await Client.connect(text_system.gateway_port) for _ in range(8)]
    results = await asyncio.gather(*(turn(c, "hello") for c in clients))
    for got in results:
        assert signals(got) == [STARTED, ENDED], summary(got)
        assert len(texts(got)) >= 1
    for c in clients:
        assert signals(await c.drain(0.5)) == []  # no second run of the same turn
    r = aioredis.from_url(text_system.redis_url)
    # The two replicas split the agent stage's partitions evenly between them.
    counts = await lease_counts(r, Stage.AGENT_BRIDGE)
    half = topology.partitions() // 2
    assert counts == {"bridge-a": half, "bridge-b": half}, counts
    await r.aclose()
    for c in clients:
        await c.close()


async def test_closing_a_session_releases_it_everywhere(text_system: TextSystem) -> None:
    r = aioredis.from_url(text_system.redis_url)
    before = set(await r.keys("xrx:{*}:session"))
    client = await Client.connect(text_system.gateway_port)
    await turn(client, "hello")
    (record,) = set(await r.keys("xrx:{*}:session")) - before
    sid = cast(bytes, record).decode().split("{")[1].split("}")[0]
    assert await holder_of(r, sid, Stage.AGENT_BRIDGE), "a replica owns the open session"
    await client.close()
    for _ in range(50):
        # This system runs only the agent stage.
        left = await entries_of(r, topology.input_stream(Stage.AGENT_BRIDGE, sid), sid)
        if not left and not await r.exists(keys.session_record(sid)):
            break
        await asyncio.sleep(0.1)
    assert not await r.exists(keys.session_record(sid))
    assert not left, "the stage handled and acknowledged the session's close"
    for key in (keys.history(sid), keys.turn_counter(sid)):
        ttl = await r.ttl(key)
        assert ttl == -2 or 0 < ttl <= 30, (key, ttl)  # gone, or expiring soon
    await r.aclose()


async def test_health_endpoints(text_system: TextSystem) -> None:
    async with httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{text_system.gateway_port}"
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/readyz")).json() == {"ready": True}
        metrics = (await http.get(f"{base}/metrics")).text
        assert "xrx_gateway_connections" in metrics


async def test_worker_health_server_binds_the_configured_host(
        text_system: TextSystem) -> None:
    port = free_port()
    text_system.start("bridge-local", "agent-bridge", port, HEALTH_HOST="127.0.0.1",
                      HEALTH_PORT=str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        async with httpx.AsyncClient() as http:
            assert "xrx_" in (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            # Another loopback address reaches a 0.0.0.0 bind, not a 127.0.0.1 one.
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.2:{port}/healthz")
    finally:
        text_system.procs.pop("bridge-local").terminate()


# --- the agent going away ---------------------------------------------------------------


async def test_agent_down_gives_the_error_message_and_recovers(redis_server) -> None:
    system = TextSystem(redis_server, 2, make_env(redis_server, 2, GUARDRAILS_AGENT_HOST="",
                                                   AGENT_TIMEOUT_S="5"))
    try:
        system.start("bridge-down", "agent-bridge")
        system.start("gateway-down", "gateway", system.gateway_port)
        wait_ready(f"http://127.0.0.1:{system.gateway_port}/readyz")
        client = await Client.connect(system.gateway_port)
        got = await turn(client, "hello")
        assert texts(got) == [
            "Sorry I had some trouble with that. Can you please repeat what you said?"]
        assert signals(got) == [STARTED, ENDED]
        system.start("agent-back", "demo-agent", int(system.env["AGENT_PORT"]))
        got = await turn(client, "hello")
        assert texts(got) and "trouble" not in texts(got)[0], summary(got)
        await client.close()
    finally:
        system.stop_all()
