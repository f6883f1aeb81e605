"""Instant stand-ins for the STT, agent and TTS services, in one process on one port, for the
pipeline load benchmark: ``python -m bench.pipeline_fakes --port P``.

They speak the same wire protocols as the reference services (``services/``), so the bridges
run unchanged, but answer at once: the benchmark measures the project's own plumbing, not
Whisper, an LLM or piper. The bridges reach them through ``STT_PATH``/``TTS_PATH`` (both
services share the one port) and ``AGENT_PATH``/``AGENT_CANCEL_PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.tts.messages import DONE, Synthesize, parse_command
from shared.protocols import TASK_ID_HEADER, AgentField, AgentNode, sse_event

STT_PATH = "/fake-stt"
TTS_PATH = "/fake-tts"
AGENT_PATH = "/fake-agent"
AGENT_CANCEL_PATH = "/fake-agent-cancel"
TRANSCRIPT = "I would like a large pizza please"
REPLY = "Sure, one large pizza."
TTS_RATE = 16_000
TTS_REPLY_MS = 300
TTS_CHUNK_MS = 100
# Quiet noise rather than zeros, so nothing downstream can take a shortcut on silence.
_CHUNK = bytes((i * 7) & 0x0F for i in range(TTS_RATE * 2 * TTS_CHUNK_MS // 1000))
_CHUNKS = TTS_REPLY_MS // TTS_CHUNK_MS


@dataclass(frozen=True)
class Behaviour:
    """What the fakes answer: the transcript of an utterance, the agent's reply to the chat
    history (with the session's guid), and the ``index``-th audio chunk speaking a text;
    optionally how long the agent thinks before replying to a history (tests: a turn still
    running when the user speaks again)."""

    transcript: Callable[[bytes], str]
    reply: Callable[[list[Any], str], str]
    chunk: Callable[[str, int], bytes]
    think_s: Callable[[list[Any]], float] | None = None


FIXED = Behaviour(transcript=lambda _pcm: TRANSCRIPT, reply=lambda _messages, _guid: REPLY,
                  chunk=lambda _text, _index: _CHUNK)


async def cancel(_: Request) -> Response:
    return JSONResponse({"detail": "nothing running"}, status_code=404)


async def ready(_: Request) -> Response:
    return JSONResponse({"ready": True})


def create_app(behaviour: Behaviour = FIXED) -> Starlette:
    task_counter = 0

    async def stt(ws: WebSocket) -> None:
        """One binary utterance in, its transcript out, as services/stt/server.py."""
        await ws.accept()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await ws.send_text(behaviour.transcript(message["bytes"]))
        except WebSocketDisconnect:
            return

    async def tts(ws: WebSocket) -> None:
        """``synthesize`` -> ~300 ms of PCM in 100 ms chunks, then ``done``; ``cancel`` has
        nothing to stop, since a reply is sent whole before the next command is read."""
        await ws.accept()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    continue
                try:
                    command = parse_command(text)
                except ValueError:
                    continue
                if isinstance(command, Synthesize):
                    for i in range(_CHUNKS):
                        await ws.send_bytes(behaviour.chunk(command.text, i))
                    await ws.send_text(DONE)
        except WebSocketDisconnect:
            return

    async def agent(request: Request) -> Response:
        """One reply event over SSE, carrying session and messages as the demo agent does."""
        nonlocal task_counter
        try:
            body: dict[str, Any] = await request.json()
        except ClientDisconnect:  # the turn was superseded while its request was in flight
            return Response(status_code=499)
        session = body.get(AgentField.SESSION)
        session = session if isinstance(session, dict) else {}
        messages = body.get(AgentField.MESSAGES)
        reply = behaviour.reply(messages if isinstance(messages, list) else [],
                                str(session.get("guid", "")))
        think_s = behaviour.think_s(messages if isinstance(messages, list) else []) \
            if behaviour.think_s else 0.0
        task_counter += 1
        event: dict[str, Any] = {
            AgentField.NODE: AgentNode.CUSTOMER_RESPONSE, AgentField.OUTPUT: reply,
            AgentField.SESSION: session,
            AgentField.MESSAGES: [{"role": "assistant", "content": reply}]}

        async def events() -> AsyncIterator[bytes]:
            if think_s:
                await asyncio.sleep(think_s)
            yield sse_event(event)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={TASK_ID_HEADER: f"fake-{task_counter}"})

    return Starlette(routes=[
        WebSocketRoute(STT_PATH, stt),
        WebSocketRoute(TTS_PATH, tts),
        Route(AGENT_PATH, agent, methods=["POST"]),
        Route(AGENT_CANCEL_PATH + "/{task_id}", cancel, methods=["POST"]),
        Route("/readyz", ready),
    ])


def env(port: int) -> dict[str, str]:
    """The settings that point the bridges at these fakes."""
    return {"STT_HOST": "127.0.0.1", "STT_PORT": str(port), "STT_PATH": STT_PATH,
            "TTS_HOST": "127.0.0.1", "TTS_PORT": str(port), "TTS_PATH": TTS_PATH,
            "AGENT_HOST": "127.0.0.1", "AGENT_PORT": str(port), "AGENT_PATH": AGENT_PATH,
            "AGENT_CANCEL_PATH": AGENT_CANCEL_PATH, "GUARDRAILS_AGENT_HOST": "",
            "TTS_SAMPLE_RATE": str(TTS_RATE), "TTS_CHUNK_MS": str(TTS_CHUNK_MS)}


def main(behaviour: Behaviour = FIXED, prog: str = "python -m bench.pipeline_fakes") -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(create_app(behaviour), host="127.0.0.1", port=args.port, log_config=None,
                log_level="warning", loop="uvloop", http="httptools", ws="websockets-sansio",
                access_log=False, ws_ping_interval=None)


if __name__ == "__main__":
    main()
