"""Redis outages as a client hears them: once when its audio starts being lost, once when the
service is back, never once per frame.

A 10 s outage under a streaming client fails hundreds of audio batches; telling the client
about each one buried it in thousands of identical messages. The gateway instead remembers
which sessions it told, and when Redis answers again (a write succeeds, or a probe does)
tells each of them once that the service is available again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from shared.redis_io import ping

log = structlog.get_logger(__name__)

AUDIO_UNAVAILABLE = "the service is temporarily unavailable; some of your audio was lost"
AVAILABLE_AGAIN = "the service is available again"
# How often Redis is probed while sessions wait to hear that it is back.
PROBE_S = 0.5

OUTAGE_NOTICES = Counter("xrx_gateway_outage_notices_total",
                         "Outage notices sent to clients", ["kind"])

Tell = Callable[[str, str], None]  # (session id, message) -> queue it for the client


class OutageNotices:
    """Who was told about the current outage; ``tell`` queues the notice for the client.

    ``audio_lost`` tells a session once per outage; ``input_lost`` records a session whose
    text or action was refused (its own error, one per message, is sent by the caller);
    ``ended`` tells every recorded session once that the service is back.
    """

    def __init__(self, tell_lost: Tell, tell_back: Tell) -> None:
        self._tell_lost, self._tell_back = tell_lost, tell_back
        self._audio_told: set[str] = set()
        self._waiting: set[str] = set()
        self._started = asyncio.Event()

    @property
    def ongoing(self) -> bool:
        return bool(self._waiting)

    def audio_lost(self, sid: str) -> None:
        if sid in self._audio_told:
            return
        self._audio_told.add(sid)
        self._wait(sid)
        OUTAGE_NOTICES.labels("audio_lost").inc()
        self._tell_lost(sid, AUDIO_UNAVAILABLE)

    def input_lost(self, sid: str) -> None:
        self._wait(sid)

    def ended(self) -> None:
        if not self._waiting:
            return
        log.info("redis is back, telling the sessions that lost input", sessions=len(self._waiting))
        for sid in self._waiting:
            OUTAGE_NOTICES.labels("available_again").inc()
            self._tell_back(sid, AVAILABLE_AGAIN)
        self._waiting.clear()
        self._audio_told.clear()
        self._started.clear()

    def forget(self, sid: str) -> None:
        """The session ended: nothing more to tell it."""
        self._audio_told.discard(sid)
        self._waiting.discard(sid)

    async def probe(self, r: Redis) -> None:
        """While anyone waits to hear the service is back, ping Redis: a client that stopped
        sending during the outage is told too, not only the next one whose write succeeds."""
        while True:
            await self._started.wait()
            await asyncio.sleep(PROBE_S)
            if self._waiting and await ping(r):
                self.ended()

    def _wait(self, sid: str) -> None:
        self._waiting.add(sid)
        self._started.set()
