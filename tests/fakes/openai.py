"""OpenAI-compatible audio endpoints (OpenAI, and Groq under ``/openai/v1``), Bearer auth.

``POST /v1/audio/transcriptions``: multipart form with ``file`` (here: a 16 kHz mono 16-bit
WAV), ``model``, ``response_format=json`` -> ``{"text": ...}``. ``POST /v1/audio/speech``:
JSON ``{"model","input","voice","response_format":"pcm"}`` -> raw 24 kHz s16le mono, streamed.
Errors: ``{"error": {"message", "type", "code"}}`` with the HTTP status.
"""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import FakeProvider, error_body, split, tone

TRANSCRIPT = "I would like a large pepperoni"
PCM_RATE = 24_000
SPEAK_SECONDS = 1.0


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The form's fields by name (the stdlib's MIME parser: no extra dependency)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


@dataclass
class FakeOpenAi(FakeProvider):
    transcribe_delay_s: float = 0.0

    def app(self) -> Starlette:
        routes = []
        for prefix in ("/v1", "/openai/v1"):
            routes += [Route(f"{prefix}/audio/transcriptions", self.transcriptions,
                             methods=["POST"]),
                       Route(f"{prefix}/audio/speech", self.speech, methods=["POST"])]
        return Starlette(routes=routes)

    def _refusal(self, request: Request) -> int | None:
        auth = request.headers.get("authorization", "")
        return self.refusal(auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None)

    async def transcriptions(self, request: Request) -> Response:
        fields = parse_multipart(request.headers.get("content-type", ""), await request.body())
        self.requests.append({"path": request.url.path, "fields": sorted(fields),
                              "model": fields.get("model", b"").decode(),
                              "response_format": fields.get("response_format", b"").decode()})
        status = self._refusal(request)
        if status is None and ("file" not in fields or not fields.get("model")):
            status = 400
        if status is not None:
            return JSONResponse(error_body(status), status_code=status)
        with wave.open(io.BytesIO(fields["file"])) as w:
            shape = (w.getframerate(), w.getnchannels(), w.getsampwidth())
            frames = w.getnframes()
        if shape != (16000, 1, 2):
            return JSONResponse(error_body(400), status_code=400)
        self.requests[-1]["seconds"] = frames / 16000
        # A slow decode, during which the fake notices a client that hung up (a cancel).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.transcribe_delay_s
        while loop.time() < deadline:
            if await request.is_disconnected():
                self.aborted += 1
                return Response(status_code=499)
            await asyncio.sleep(0.02)
        self.completed += 1
        return JSONResponse({"text": f" {TRANSCRIPT} "})

    async def speech(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append({"path": request.url.path, "body": body})
        status = self._refusal(request)
        if status is None and (body.get("response_format") != "pcm" or not body.get("input")
                               or not body.get("voice") or not body.get("model")):
            status = 400
        if status is not None:
            return JSONResponse(error_body(status), status_code=status)
        return StreamingResponse(self.paced(split(tone(PCM_RATE, SPEAK_SECONDS), 10)),
                                 media_type="audio/pcm")
