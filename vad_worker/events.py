"""What the VAD stage tells the rest of the pipeline about a session's audio."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The user has been talking long enough to count as barge-in (once per utterance).

    ``at_ms`` is the session's audio position when that became certain: the end of the
    window that completed ``barge_in_min_ms`` of voice; ``voice_start_ms`` where that voice
    began (barge-in cuts only a turn that started before it).
    """

    session_id: str
    at_ms: int
    voice_start_ms: int = -1


@dataclass(frozen=True, slots=True)
class Utterance:
    """One segment of speech for STT: s16le mono 16 kHz, pre-roll included.

    ``start_ms``/``end_ms`` bound exactly the audio in ``pcm``, on the session's audio clock
    (milliseconds of audio received, not wall time); ``voice_end_ms`` is where the voice
    stopped on that clock (``end_ms`` for a cut with the voice still going), ``voice_start_ms``
    where it began (after the pre-roll; ``start_ms`` for the piece after a cut).
    """

    session_id: str
    pcm: bytes
    start_ms: int
    end_ms: int
    voice_end_ms: int = -1
    voice_start_ms: int = -1


@dataclass(frozen=True, slots=True)
class SilenceStarted:
    """A tentative end: voice stopped in an utterance that has enough speech to be sent.

    If the silence lasts ``silence_ms`` the :class:`Utterance` that follows has the same
    ``start_ms`` and ``end_ms``, and audio that differs only in the tail of silence after
    ``voice_end_ms`` (``pcm`` is the utterance so far); if the user talks again first, this
    is void and a later SilenceStarted or Utterance supersedes it. STT can start on ``pcm``
    while the silence window runs.
    """

    session_id: str
    pcm: bytes
    start_ms: int
    end_ms: int
    voice_end_ms: int


VadEvent = SpeechStarted | SilenceStarted | Utterance
