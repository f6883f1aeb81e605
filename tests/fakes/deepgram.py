"""Deepgram: live transcription (``wss /v1/listen``) and Aura speech (``POST /v1/speak``).

Auth ``Authorization: Token <key>``. Listen: binary linear16 audio in; ``Results`` messages
out (``is_final``, ``speech_final``, ``channel.alternatives[0].transcript``), interim ones
first; ``{"type":"KeepAlive"}`` is ignored; ``{"type":"CloseStream"}`` flushes, sends
``Metadata`` and closes. The fake "recognises" ``WORDS`` per ``SECONDS_PER_UTTERANCE`` of
audio, as two final pieces, the second one ``speech_final``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.fakes import FakeProvider, deny, error_body, split, tone

WORDS = ("I would like", "a large pepperoni")
SECONDS_PER_UTTERANCE = 2.0
SPEAK_SECONDS = 1.0


def results(text: str, *, is_final: bool, speech_final: bool) -> str:
    return json.dumps({
        "type": "Results", "channel_index": [0, 1], "duration": 1.0, "start": 0.0,
        "is_final": is_final, "speech_final": speech_final, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.98, "words": []}]},
        "metadata": {"request_id": "fake", "model_info": {"name": "fake"}}})


@dataclass
class FakeDeepgram(FakeProvider):
    audio_bytes: int = 0
    keepalives: int = 0
    close_streams: int = 0
    open_streams: int = 0
    queries: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[WebSocketRoute("/v1/listen", self.listen),
                                 Route("/v1/speak", self.speak, methods=["POST"])])

    @staticmethod
    def _token(header: str | None) -> str | None:
        return header.removeprefix("Token ") if header and header.startswith("Token ") else None

    async def listen(self, ws: WebSocket) -> None:
        query = dict(ws.query_params)
        self.queries.append(query)
        status = self.refusal(self._token(ws.headers.get("authorization")))
        if status is None and (query.get("encoding") != "linear16" or "model" not in query):
            status = 400
        if status is not None:
            await deny(ws, status)
            return
        rate = int(query.get("sample_rate", "16000"))
        per_utterance = int(rate * 2 * SECONDS_PER_UTTERANCE)
        await ws.accept()
        self.open_streams += 1
        pending = 0
        frames = 0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    self.aborted += 1
                    return
                if message.get("text"):
                    kind = json.loads(message["text"]).get("type")
                    if kind == "KeepAlive":
                        self.keepalives += 1
                    elif kind == "CloseStream":
                        self.close_streams += 1
                        if pending >= per_utterance // 2:  # half heard: the first words
                            await ws.send_text(results(WORDS[0], is_final=True,
                                                       speech_final=False))
                        await ws.send_text(json.dumps({"type": "Metadata",
                                                       "request_id": "fake"}))
                        self.completed += 1
                        await ws.close()
                        return
                    continue
                data = message.get("bytes") or b""
                self.audio_bytes += len(data)
                pending += len(data)
                frames += 1
                if self.drop_after_chunks is not None and frames > self.drop_after_chunks:
                    raise RuntimeError("fake drop")  # uvicorn closes with 1011
                if pending >= per_utterance:
                    pending = 0
                    await ws.send_text(results(WORDS[0], is_final=False, speech_final=False))
                    await ws.send_text(results(WORDS[0], is_final=True, speech_final=False))
                    await ws.send_text(results(WORDS[1], is_final=True, speech_final=True))
        except WebSocketDisconnect:
            self.aborted += 1
        finally:
            self.open_streams -= 1

    async def speak(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.requests.append({"query": dict(request.query_params), "body": body,
                              "auth": request.headers.get("authorization")})
        status = self.refusal(self._token(request.headers.get("authorization")))
        q = request.query_params
        if status is None and (q.get("encoding") != "linear16" or q.get("container") != "none"
                               or not q.get("model", "").startswith("aura")
                               or not body.get("text")):
            status = 400
        if status is not None:
            return JSONResponse(error_body(status), status_code=status)
        pieces = split(tone(int(q.get("sample_rate", "24000")), SPEAK_SECONDS), 10)

        return StreamingResponse(self.paced(pieces), media_type="application/octet-stream")
