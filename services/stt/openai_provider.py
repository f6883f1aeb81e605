"""The ``openai`` and ``groq`` providers: any OpenAI-compatible ``/audio/transcriptions``
endpoint (OpenAI, Groq, a local vLLM or speaches server), one WAV upload per utterance."""

from __future__ import annotations

import io
import wave

import httpx

from services.cloud import ProviderError, status_error, with_retries
from services.stt.audio import BYTES_PER_SAMPLE, SAMPLE_RATE


def wav_bytes(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(BYTES_PER_SAMPLE)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return out.getvalue()


class OpenAiTranscriber:
    """Transcribing an utterance has no side effects, so failed uploads are retried."""

    def __init__(self, *, provider: str, base_url: str, api_key: str, model: str,
                 timeout_s: float) -> None:
        self.provider, self.model = provider, model
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        # A pool shared by the service's connections, never one socket for all of them.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def transcribe(self, pcm: bytes) -> str:
        wav = wav_bytes(pcm)
        return await with_retries(lambda: self._once(wav))

    async def _once(self, wav: bytes) -> str:
        try:
            resp = await self._client.post(
                self.url, headers=self._headers,
                files={"file": ("utterance.wav", wav, "audio/wav")},
                data={"model": self.model, "response_format": "json"})
        except httpx.HTTPError as err:
            raise ProviderError(self.provider, f"unreachable ({err!r})") from err
        if resp.status_code != 200:
            raise status_error(self.provider, resp.status_code, resp.text)
        try:
            text = resp.json()["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ProviderError(self.provider, f"unexpected answer: {resp.text[:200]}",
                                resp.status_code) from err
        return str(text).strip()
