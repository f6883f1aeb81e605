"""The latency breakdown of spoken turns: from the end of the user's voice (wall clock, as the
VAD estimated it from its audio clock) to each step on the way to the first audio.

Each stage observes its own step; the client's end is measured by ``make bench``.
"""

from __future__ import annotations

import time
from enum import StrEnum

import structlog
from prometheus_client import Histogram

log = structlog.get_logger(__name__)


class Step(StrEnum):
    UTTERANCE = "utterance"  # the VAD publishes the utterance (the end of the voice is known)
    TRANSCRIPT = "transcript"  # the STT bridge publishes the transcript
    AGENT_FIRST_OUTPUT = "agent_first_output"  # the agent bridge gets the agent's first output
    TTS_FIRST_AUDIO = "tts_first_audio"  # the TTS bridge publishes the first audio chunk


# The log line each step writes (make bench reads them back).
STEP_EVENT = "voice turn step"
SINCE_VOICE_END = Histogram(
    "xrx_voice_turn_seconds", "End of the user's voice to each step of a spoken turn",
    ["step"], buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0))


def observe(step: Step, voice_end_ms: int, *, session_id: str, turn: int) -> None:
    """Record ``step`` of the turn whose voice ended at ``voice_end_ms`` (0: not spoken)."""
    if voice_end_ms <= 0:
        return
    elapsed_s = max(0.0, time.time() - voice_end_ms / 1000)
    SINCE_VOICE_END.labels(step).observe(elapsed_s)
    log.info(STEP_EVENT, step=step.value, since_voice_end_ms=round(elapsed_s * 1000),
             session_id=session_id, turn=turn)
