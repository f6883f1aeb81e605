"""Speculative transcription: start on a tentative end, use the result once the VAD confirms it.

The VAD sends the utterance so far as soon as the user's voice stops (a tentative end) and
the utterance itself once the silence has lasted STT_WAIT_MS. Transcribing the tentative
audio at once hides the decode inside that silence window. The result is used only for the
utterance with the same bounds, which holds the same speech (it adds only silence after
the voice), and only once that utterance arrives: nothing reaches the client or the agent
before the turn is confirmed. If the user talks on, a later tentative end or utterance with
other bounds supersedes the speculation, which is dropped (and its connection closed).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import Counter

from shared.messages import UtteranceIn
from stt_bridge.stt_client import SttClient

log = structlog.get_logger(__name__)

SPECULATIONS = Counter("xrx_stt_speculations_total",
                       "Speculative transcriptions by outcome: used, superseded, failed",
                       ["outcome"])


class Speculation:
    """At most one speculative transcription per session: of the latest tentative end."""

    def __init__(self, stt: SttClient) -> None:
        self.stt = stt
        self._bounds: tuple[int, int] | None = None
        self._task: asyncio.Task[str] | None = None

    def start(self, tentative: UtteranceIn) -> None:
        self.drop()
        self._bounds = (tentative.start_ms, tentative.end_ms)
        self._task = asyncio.create_task(self.stt.transcribe(tentative.pcm))

    def drop(self) -> None:
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            else:
                # Retrieve the exception of a failed speculation so asyncio does not log it.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    self._task.result()
            SPECULATIONS.labels("superseded").inc()
        self._task, self._bounds = None, None

    async def take(self, utt: UtteranceIn) -> str | None:
        """The transcript of ``utt`` if a speculation made it (waiting for it to finish);
        None when there is none for these bounds or it failed: transcribe ``utt`` then."""
        if self._task is None or self._bounds != (utt.start_ms, utt.end_ms):
            self.drop()
            return None
        task, self._task, self._bounds = self._task, None, None
        try:
            text = await task
        except Exception as err:  # the plain transcription reports it, if it is real
            SPECULATIONS.labels("failed").inc()
            log.info("speculative transcription failed", error=str(err))
            return None
        SPECULATIONS.labels("used").inc()
        return text

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task, self._bounds = None, None
