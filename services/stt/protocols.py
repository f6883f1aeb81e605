"""The seams between the WebSocket server and speech-recognition engines."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class Transcriber(Protocol):
    """Recognises one whole utterance at a time (the VAD-segmented xRx flow)."""

    async def transcribe(self, pcm: bytes) -> str:
        """Return the transcript of PCM s16le mono 16 kHz audio; ``""`` when nothing was heard.

        The audio has already been validated (non-empty, even length, bounded duration).
        """
        ...


@runtime_checkable
class StreamingTranscriber(Protocol):
    """Recognises a continuous stream (the xRx ``deepgram`` flow, no VAD segmentation).

    The server feeds every binary frame of a connection into one ``stream`` instead of
    treating each as an utterance, and sends each yielded final transcript as a text frame
    (``services/stt/deepgram_provider.py``).
    """

    def stream(self, audio: AsyncIterable[bytes]) -> AsyncIterator[str]:
        """Consume PCM s16le 16 kHz frames; yield each final transcript as it is recognised."""
        ...
