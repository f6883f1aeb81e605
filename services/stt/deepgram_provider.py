"""The ``deepgram`` provider: Deepgram's live streaming API (``wss://api.deepgram.com/v1/listen``).

One Deepgram connection per STT connection, i.e. per conversation (the STT bridge streams a
session's audio over a connection of its own). Audio goes out as linear16 at 16 kHz as it
arrives; Deepgram's own endpointing decides where an utterance ends: the ``is_final`` pieces
of an utterance are joined and yielded when a result says ``speech_final`` (or an
``UtteranceEnd`` arrives, or the stream ends). Interim results only keep Deepgram's
end-of-utterance detection fed; they are not forwarded, since every text the xRx STT
protocol carries is final. The VAD worker then only drives barge-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import urlencode

import structlog
import websockets
from websockets.asyncio.client import ClientConnection

from services.cloud import ProviderError, ws_error, ws_url
from services.stt.audio import SAMPLE_RATE

log = structlog.get_logger(__name__)

PROVIDER = "deepgram"
# Deepgram closes a stream that carried neither audio nor KeepAlive for 10 s (NET-0001).
KEEPALIVE_S = 5.0
KEEPALIVE = json.dumps({"type": "KeepAlive"})
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


class DeepgramTranscriber:
    def __init__(self, *, api_key: str, base_url: str, model: str, endpointing_ms: int,
                 timeout_s: float) -> None:
        self._api_key = api_key
        self._timeout_s = timeout_s
        query = urlencode({"model": model, "encoding": "linear16", "sample_rate": SAMPLE_RATE,
                           "channels": 1, "interim_results": "true",
                           "endpointing": endpointing_ms, "punctuate": "true",
                           "smart_format": "true"})
        self.url = f"{ws_url(base_url, '/v1/listen')}?{query}"

    async def _connect(self) -> ClientConnection:
        try:
            return await asyncio.wait_for(
                websockets.connect(self.url, max_size=None,
                                   additional_headers={"Authorization": f"Token {self._api_key}"}),
                self._timeout_s)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
            raise ws_error(PROVIDER, err) from err

    async def stream(self, audio: AsyncIterable[bytes]) -> AsyncIterator[str]:
        ws = await self._connect()
        sender = asyncio.create_task(_send(ws, audio))
        pieces: list[str] = []
        try:
            async for raw in ws:
                message = _json(raw)
                kind = message.get("type")
                if kind == "Results":
                    if not message.get("is_final"):
                        continue
                    text = _transcript(message)
                    if text:
                        pieces.append(text)
                    if message.get("speech_final") and pieces:
                        yield " ".join(pieces)
                        pieces = []
                elif kind == "UtteranceEnd" and pieces:
                    yield " ".join(pieces)
                    pieces = []
                elif kind == "Error":
                    raise ProviderError(PROVIDER, str(message.get("description")
                                                      or message.get("message") or message))
        except websockets.ConnectionClosed as err:
            raise ws_error(PROVIDER, err) from err
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await ws.close()
        if pieces:  # the stream ended (CloseStream) with words not yet endpointed
            yield " ".join(pieces)


async def _send(ws: ClientConnection, audio: AsyncIterable[bytes]) -> None:
    """Audio out as it comes, a KeepAlive while none does, CloseStream when it ends."""
    frames = aiter(audio)
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(frames))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                await ws.send(KEEPALIVE)
                continue
            try:
                frame = pending.result()
            except StopAsyncIteration:
                await ws.send(CLOSE_STREAM)
                return
            pending = None
            await ws.send(frame)
    except websockets.ConnectionClosed:
        return  # the reader reports how the connection ended
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


def _json(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        log.warning("deepgram sent something other than JSON", frame=str(raw)[:200])
        return {}
    return message if isinstance(message, dict) else {}


def _transcript(message: dict[str, Any]) -> str:
    try:
        return str(message["channel"]["alternatives"][0]["transcript"]).strip()
    except (KeyError, IndexError, TypeError):
        return ""
