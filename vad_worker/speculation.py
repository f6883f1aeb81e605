"""What the VAD tells the STT stage about a tentative end, and the wall-clock time of a point
on a session's audio clock."""

from __future__ import annotations

from shared.messages import SpeechKind, UtteranceIn
from vad_worker.events import SilenceStarted
from vad_worker.rechunk import SAMPLE_RATE
from vad_worker.state import SessionVadState


def wall_ms(state: SessionVadState, audio_ms: int, live_ms: int) -> int:
    """When the audio at ``audio_ms`` was live, given that the newest audio the state has
    processed reached Redis at ``live_ms`` (its entry's id: Redis's clock). Audio the VAD
    takes late (a backlog after a failover) keeps the time it was said."""
    return live_ms - (state.pos * 1000 // SAMPLE_RATE - audio_ms)


def tentative_entry(sid: str, state: SessionVadState, event: SilenceStarted,
                    live_ms: int) -> UtteranceIn:
    return UtteranceIn(session_id=sid, kind=SpeechKind.TENTATIVE, pcm=event.pcm,
                       start_ms=event.start_ms, end_ms=event.end_ms,
                       voice_end_ms=wall_ms(state, event.voice_end_ms, live_ms))
