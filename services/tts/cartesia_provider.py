"""The ``cartesia`` TTS provider: the Sonic WebSocket API (``/tts/websocket``), raw
``pcm_s16le`` at ``TTS_SAMPLE_RATE`` when Cartesia offers it.

One connection per synthesis (never one multiplexed socket for every session): the request
carries a fresh ``context_id``; ``chunk`` messages carry base64 audio until ``done``, an
``error`` message ends it with the provider's status code.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator

import websockets

from services.cloud import (
    ProviderError,
    retry_until_output,
    status_error,
    ws_connect,
    ws_recv,
    ws_url,
)
from services.tts.audio import PcmStream

PROVIDER = "cartesia"
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
FALLBACK_RATE = 16_000


class CartesiaSynthesizer:
    def __init__(self, *, api_key: str, base_url: str, version: str, model_id: str,
                 voice_id: str, sample_rate: int, timeout_s: float) -> None:
        self._provider_rate = sample_rate if sample_rate in PCM_RATES else FALLBACK_RATE
        self._url = ws_url(base_url, "/tts/websocket")
        self._headers = {"X-API-Key": api_key, "Cartesia-Version": version}
        self._model_id, self._voice_id = model_id, voice_id
        self._sample_rate, self._timeout_s = sample_rate, timeout_s

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def voice(self) -> str:
        return f"{self._model_id}/{self._voice_id}"

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        return retry_until_output(lambda: self._stream(text))

    async def _stream(self, text: str) -> AsyncGenerator[bytes, None]:
        ws = await ws_connect(PROVIDER, self._url, self._headers, self._timeout_s)
        pcm = PcmStream(self._provider_rate, self._sample_rate)
        context_id = str(uuid.uuid4())
        finished = False
        try:
            await ws.send(json.dumps({
                "model_id": self._model_id, "transcript": text, "context_id": context_id,
                "voice": {"mode": "id", "id": self._voice_id}, "language": "en",
                "output_format": {"container": "raw", "encoding": "pcm_s16le",
                                  "sample_rate": self._provider_rate},
                "continue": False}))
            while True:
                message = _message(await ws_recv(PROVIDER, ws, self._timeout_s))
                kind = message.get("type")
                if kind == "chunk" and isinstance(message.get("data"), str):
                    out = pcm.feed(base64.b64decode(str(message["data"])))
                    if out:
                        yield out
                elif kind == "error":
                    status = message.get("status_code")
                    detail = str(message.get("error") or message.get("message") or "")
                    if isinstance(status, int):
                        raise status_error(PROVIDER, status, detail)
                    raise ProviderError(PROVIDER, detail or "error without a reason")
                if kind == "done" or message.get("done"):
                    finished = True
                    break
        finally:
            if not finished:  # a cancel: tell Cartesia to stop this context, then hang up
                with contextlib.suppress(websockets.ConnectionClosed, OSError):
                    await ws.send(json.dumps({"context_id": context_id, "cancel": True}))
            await ws.close()
        tail = pcm.flush()
        if tail:
            yield tail


def _message(raw: str | bytes) -> dict[str, object]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise ProviderError(PROVIDER, f"unexpected frame {str(raw)[:100]!r}") from None
    if not isinstance(message, dict):
        raise ProviderError(PROVIDER, f"unexpected frame {str(raw)[:100]!r}")
    return message
