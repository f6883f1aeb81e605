"""Raw PCM streamed in an HTTP response body (OpenAI ``/audio/speech``, Deepgram ``/v1/speak``),
handed on as it arrives, at the service's rate. Leaving the generator early closes the
response, which aborts the request upstream: that is how a cancel reaches the provider."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from services.cloud import ProviderError, status_error
from services.tts.audio import PcmStream


def http_client(timeout_s: float) -> httpx.AsyncClient:
    """A connection pool per synthesizer; the read timeout bounds every gap in the stream."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))


async def stream_pcm(client: httpx.AsyncClient, provider: str, url: str, *, in_rate: int,
                     out_rate: int, **request: Any) -> AsyncGenerator[bytes, None]:
    pcm = PcmStream(in_rate, out_rate)
    try:
        async with client.stream("POST", url, **request) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                raise status_error(provider, resp.status_code, body)
            async for data in resp.aiter_bytes():
                out = pcm.feed(data)
                if out:
                    yield out
    except httpx.HTTPError as err:
        raise ProviderError(provider, f"unreachable or dropped ({err!r})") from err
    tail = pcm.flush()
    if tail:
        yield tail
