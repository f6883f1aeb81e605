"""The seam between the WebSocket server and speech-synthesis engines."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable


@runtime_checkable
class Synthesizer(Protocol):
    @property
    def provider(self) -> str:
        """Registry name, part of the cache key."""
        ...

    @property
    def voice(self) -> str:
        """Voice identifier, part of the cache key."""
        ...

    @property
    def sample_rate(self) -> int:
        """Rate of the PCM that :meth:`synthesize` yields."""
        ...

    def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield PCM s16le mono at :attr:`sample_rate`, one block per sentence, as each is ready.

        Blocking work must run off the event loop. The caller stops iterating to cancel, so
        an implementation must not do work ahead of what has been asked for.
        """
        ...
