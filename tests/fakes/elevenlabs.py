"""ElevenLabs text-to-speech stream-input WebSocket:
``/v1/text-to-speech/{voice_id}/stream-input?model_id=...&output_format=pcm_<rate>``, auth
header ``xi-api-key``. In: ``{"text": " ", ...}`` (begin), text messages, ``{"text": ""}``
(end). Out: ``{"audio": <base64 pcm>, "isFinal": null, ...}`` then ``{"isFinal": true}``."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.fakes import FakeProvider, deny, split, tone

SPEAK_SECONDS = 1.0


@dataclass
class FakeElevenLabs(FakeProvider):
    def app(self) -> Starlette:
        return Starlette(routes=[WebSocketRoute(
            "/v1/text-to-speech/{voice_id}/stream-input", self.stream_input)])

    async def stream_input(self, ws: WebSocket) -> None:
        query = dict(ws.query_params)
        request: dict[str, object] = {"voice_id": ws.path_params["voice_id"], "query": query,
                                      "texts": []}
        self.requests.append(request)
        status = self.refusal(ws.headers.get("xi-api-key"))
        fmt = query.get("output_format", "")
        if status is None and (not fmt.startswith("pcm_") or not query.get("model_id")):
            status = 400
        if status is not None:
            await deny(ws, status)
            return
        await ws.accept()
        texts: list[str] = []
        request["texts"] = texts
        ended = False
        try:
            first = json.loads(await ws.receive_text())
            if first.get("text") != " ":  # the protocol's opening message
                await ws.close(code=1008, reason="first message must be the BOS text ' '")
                return
            while (text := json.loads(await ws.receive_text()).get("text")) != "":
                texts.append(str(text))
            pieces = split(tone(int(fmt.removeprefix("pcm_")), SPEAK_SECONDS), 10)
            for sent, piece in enumerate(pieces):
                if self.drop_after_chunks is not None and sent >= self.drop_after_chunks:
                    ended = True
                    raise RuntimeError("fake drop")
                await ws.send_text(json.dumps({"audio": base64.b64encode(piece).decode(),
                                               "isFinal": None, "normalizedAlignment": None}))
                await asyncio.sleep(self.chunk_pause_s)
            await ws.send_text(json.dumps({"isFinal": True}))
            ended = True
            self.completed += 1
            await ws.close()
        except WebSocketDisconnect:
            pass
        finally:
            if not ended:
                self.aborted += 1
