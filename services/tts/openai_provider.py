"""The ``openai`` TTS provider: ``POST /v1/audio/speech`` with ``response_format: pcm``
(24 kHz s16le mono, streamed as it is generated), resampled to ``TTS_SAMPLE_RATE``."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from services.cloud import retry_until_output
from services.tts.cloud_http import http_client, stream_pcm

PROVIDER = "openai"
OPENAI_PCM_RATE = 24_000


class OpenAiSynthesizer:
    def __init__(self, *, api_key: str, base_url: str, model: str, voice: str,
                 sample_rate: int, timeout_s: float) -> None:
        self._url = base_url.rstrip("/") + "/audio/speech"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._model, self._voice, self._sample_rate = model, voice, sample_rate
        self._client = http_client(timeout_s)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def voice(self) -> str:
        return f"{self._model}/{self._voice}"

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        return retry_until_output(lambda: self._stream(text))

    def _stream(self, text: str) -> AsyncGenerator[bytes, None]:
        return stream_pcm(self._client, PROVIDER, self._url, in_rate=OPENAI_PCM_RATE,
                          out_rate=self._sample_rate, headers=self._headers,
                          json={"model": self._model, "input": text, "voice": self._voice,
                                "response_format": "pcm"})
