"""The ``deepgram`` TTS provider: Aura over ``POST /v1/speak`` (linear16, no container, the
body streamed as it is generated), asked for ``TTS_SAMPLE_RATE`` directly when Aura offers it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from urllib.parse import urlencode

from services.cloud import retry_until_output
from services.tts.cloud_http import http_client, stream_pcm

PROVIDER = "deepgram"
# The linear16 rates Aura produces; anything else is asked at 24 kHz and resampled here.
AURA_RATES = frozenset({8000, 16000, 24000, 32000, 48000})
FALLBACK_RATE = 24_000


class DeepgramSynthesizer:
    def __init__(self, *, api_key: str, base_url: str, model: str, sample_rate: int,
                 timeout_s: float) -> None:
        self._provider_rate = sample_rate if sample_rate in AURA_RATES else FALLBACK_RATE
        query = urlencode({"model": model, "encoding": "linear16", "container": "none",
                           "sample_rate": self._provider_rate})
        self._url = f"{base_url.rstrip('/')}/v1/speak?{query}"
        self._headers = {"Authorization": f"Token {api_key}"}
        self._model, self._sample_rate = model, sample_rate
        self._client = http_client(timeout_s)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def voice(self) -> str:
        return self._model

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        return retry_until_output(lambda: self._stream(text))

    def _stream(self, text: str) -> AsyncGenerator[bytes, None]:
        return stream_pcm(self._client, PROVIDER, self._url, in_rate=self._provider_rate,
                          out_rate=self._sample_rate, headers=self._headers,
                          json={"text": text})
