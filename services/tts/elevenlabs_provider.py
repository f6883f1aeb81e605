"""The ``elevenlabs`` TTS provider: the WebSocket stream-input API
(``/v1/text-to-speech/{voice_id}/stream-input``), raw PCM asked at ``TTS_SAMPLE_RATE`` when
ElevenLabs offers it.

One connection per synthesis, as the API defines it: the opening message (text ``" "``,
voice settings), the text, then ``""`` to end the input; audio comes back base64 in
``{"audio": ...}`` messages until one says ``"isFinal": true``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from urllib.parse import quote, urlencode

from services.cloud import ProviderError, retry_until_output, ws_connect, ws_recv, ws_url
from services.tts.audio import PcmStream

PROVIDER = "elevenlabs"
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
FALLBACK_RATE = 16_000


class ElevenLabsSynthesizer:
    def __init__(self, *, api_key: str, base_url: str, voice_id: str, model_id: str,
                 sample_rate: int, timeout_s: float) -> None:
        self._provider_rate = sample_rate if sample_rate in PCM_RATES else FALLBACK_RATE
        query = urlencode({"model_id": model_id,
                           "output_format": f"pcm_{self._provider_rate}"})
        path = f"/v1/text-to-speech/{quote(voice_id, safe='')}/stream-input"
        self._url = f"{ws_url(base_url, path)}?{query}"
        self._headers = {"xi-api-key": api_key}
        self._voice_id, self._model_id = voice_id, model_id
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
        try:
            await ws.send(json.dumps({"text": " ", "voice_settings": {
                "stability": 0.5, "similarity_boost": 0.8}}))
            # The trailing space tells ElevenLabs the word is complete; the flush makes it
            # speak everything now instead of waiting for more text.
            await ws.send(json.dumps({"text": text.strip() + " ", "flush": True}))
            await ws.send(json.dumps({"text": ""}))
            while True:
                message = _message(await ws_recv(PROVIDER, ws, self._timeout_s))
                audio = message.get("audio")
                if isinstance(audio, str) and audio:
                    out = pcm.feed(base64.b64decode(audio))
                    if out:
                        yield out
                if message.get("isFinal"):
                    break
                if "error" in message or message.get("message"):
                    raise ProviderError(PROVIDER, str(message.get("message")
                                                      or message.get("error")))
        finally:
            await ws.close()  # on a cancel too: ElevenLabs stops generating
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
