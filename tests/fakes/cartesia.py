"""Cartesia TTS WebSocket ``/tts/websocket``: headers ``X-API-Key`` and ``Cartesia-Version``
(or the ``api_key`` / ``cartesia_version`` query parameters). In: a generation request with
``model_id``, ``transcript``, ``voice``, ``context_id`` and ``output_format`` (raw,
pcm_s16le, sample_rate). Out: ``{"type":"chunk","data":<base64>,"done":false,
"status_code":206,"context_id":...}`` then ``{"type":"done","done":true,...}``; failures as
``{"type":"error","done":true,"status_code":...,"error":...}``. A bad key is refused at the
handshake; this fake reports a quota (``fail_status``) in-band, as an error message."""

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
class FakeCartesia(FakeProvider):
    cancels: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[WebSocketRoute("/tts/websocket", self.websocket)])

    async def websocket(self, ws: WebSocket) -> None:
        key = ws.headers.get("x-api-key") or ws.query_params.get("api_key")
        version = ws.headers.get("cartesia-version") or ws.query_params.get("cartesia_version")
        if key != self.key:
            await deny(ws, 401)
            return
        if not version:
            await deny(ws, 400)
            return
        await ws.accept()
        ended = False
        try:
            request = json.loads(await ws.receive_text())
            self.requests.append(request)
            context_id = request.get("context_id")
            fmt = request.get("output_format") or {}
            status = self.fail_status or self.fail_once_status
            self.fail_once_status = None
            if status is None and (fmt.get("container") != "raw"
                                   or fmt.get("encoding") != "pcm_s16le"
                                   or not request.get("transcript") or not context_id
                                   or (request.get("voice") or {}).get("mode") != "id"):
                status = 400
            if status is not None:
                ended = True
                await ws.send_text(json.dumps({"type": "error", "done": True,
                                               "status_code": status, "context_id": context_id,
                                               "error": "quota exceeded" if status == 429
                                               else "bad request"}))
                return
            pieces = split(tone(int(fmt["sample_rate"]), SPEAK_SECONDS), 10)
            for sent, piece in enumerate(pieces):
                if self.drop_after_chunks is not None and sent >= self.drop_after_chunks:
                    ended = True
                    raise RuntimeError("fake drop")
                await ws.send_text(json.dumps({"type": "chunk", "done": False,
                                               "status_code": 206, "step_time": 10,
                                               "context_id": context_id,
                                               "data": base64.b64encode(piece).decode()}))
                await asyncio.sleep(self.chunk_pause_s)
            await ws.send_text(json.dumps({"type": "done", "done": True, "status_code": 206,
                                           "context_id": context_id}))
            ended = True
            self.completed += 1
            # Stay open like the real service: the client closes.
            while True:
                message = json.loads(await ws.receive_text())
                if message.get("cancel"):
                    self.cancels += 1
        except WebSocketDisconnect:
            pass
        finally:
            if not ended:
                self.aborted += 1
