"""Turn a session's per-window speech probabilities into barge-in events and utterances.

Pure bookkeeping on :class:`SessionVadState`: no model, no I/O, no clock. Time is the
number of samples the session has sent, so a given audio stream always yields the same
events however it was framed, batched or moved between workers.

Semantics follow the original xRx turn-taking (STT_WAIT_MS of silence closes an utterance,
sustained voice cancels the agent) with Silero's probabilities in place of WebRTC's
booleans, plus the guards a probability model needs: hysteresis, a pre-roll, a minimum
amount of speech and a maximum utterance length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vad_worker.events import SilenceStarted, SpeechStarted, Utterance, VadEvent
from vad_worker.rechunk import SAMPLE_BYTES, SAMPLE_RATE, WINDOW_SAMPLES
from vad_worker.state import SessionVadState

# Silero's own streaming iterator leaves speech only below threshold - 0.15; the gap keeps
# a probability hovering around the threshold from toggling the state every window.
HYSTERESIS = 0.15
# Voice may dip for this long without restarting the barge-in count: plosives and short
# pauses inside a word are not the end of a run, while a cough followed by a click is two.
BARGE_IN_MAX_GAP_MS = 64
_SAMPLES_PER_MS = SAMPLE_RATE // 1000


class VadSettings(Protocol):
    """The part of shared.config.Settings the VAD reads (kept structural to stay decoupled)."""

    VAD_THRESHOLD: float
    VAD_MIN_SPEECH_MS: int
    VAD_PREROLL_MS: int
    STT_WAIT_MS: int
    VAD_MAX_UTTERANCE_MS: int
    BARGE_IN_MIN_MS: int
    STT_SPECULATIVE: bool


def _ms(samples: int) -> int:
    return samples // _SAMPLES_PER_MS


@dataclass(frozen=True, slots=True)
class VadParams:
    """Segmentation settings; defaults are the environment defaults in shared.config.

    - ``threshold`` (VAD_THRESHOLD, 0.5): speech probability that starts voice; voice ends
      below ``threshold - 0.15``.
    - ``min_speech_ms`` (VAD_MIN_SPEECH_MS, 250): an utterance with less voice than this is
      dropped as noise (clicks, bumps, breaths).
    - ``preroll_ms`` (VAD_PREROLL_MS, 300): audio kept from before voice was detected, so
      the first syllable (which Silero scores late) reaches STT.
    - ``silence_ms`` (STT_WAIT_MS, 250): silence that ends an utterance.
    - ``max_utterance_ms`` (VAD_MAX_UTTERANCE_MS, 15000): longer utterances are cut and
      sent at this length; the speech that follows starts the next one.
    - ``barge_in_min_ms`` (BARGE_IN_MIN_MS, 250): voice, with only short dips, needed
      before SpeechStarted is sent.
    - ``tail_ms`` (150): silence kept after the last voice, so soft word endings are not
      clipped; the rest of the closing silence is not sent to STT.
    - ``tentative_ends`` (STT_SPECULATIVE, true): send SilenceStarted when silence begins
      in an utterance, so STT can start before the end is certain.
    """

    threshold: float = 0.5
    min_speech_ms: int = 250
    preroll_ms: int = 300
    silence_ms: int = 250
    max_utterance_ms: int = 15_000
    barge_in_min_ms: int = 250
    tail_ms: int = 150
    tentative_ends: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        for name in ("min_speech_ms", "preroll_ms", "silence_ms", "barge_in_min_ms", "tail_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_utterance_ms * _SAMPLES_PER_MS < WINDOW_SAMPLES:
            raise ValueError("max_utterance_ms must be at least one 32 ms window")

    @classmethod
    def from_settings(cls, s: VadSettings) -> VadParams:
        return cls(
            threshold=s.VAD_THRESHOLD,
            min_speech_ms=s.VAD_MIN_SPEECH_MS,
            preroll_ms=s.VAD_PREROLL_MS,
            silence_ms=s.STT_WAIT_MS,
            max_utterance_ms=s.VAD_MAX_UTTERANCE_MS,
            barge_in_min_ms=s.BARGE_IN_MIN_MS,
            tentative_ends=s.STT_SPECULATIVE,
        )


class Segmenter:
    """Applies :class:`VadParams` to one window at a time of one session."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self._thr = params.threshold
        self._neg_thr = max(params.threshold - HYSTERESIS, 0.01)
        self._min_speech = params.min_speech_ms * _SAMPLES_PER_MS
        self._preroll_bytes = params.preroll_ms * _SAMPLES_PER_MS * SAMPLE_BYTES
        self._silence = params.silence_ms * _SAMPLES_PER_MS
        self._max_bytes = params.max_utterance_ms * _SAMPLES_PER_MS * SAMPLE_BYTES
        self._barge_min = params.barge_in_min_ms * _SAMPLES_PER_MS
        self._max_gap = BARGE_IN_MAX_GAP_MS * _SAMPLES_PER_MS
        self._tail = params.tail_ms * _SAMPLES_PER_MS

    def feed(self, st: SessionVadState, window: bytes, prob: float) -> list[VadEvent]:
        """Account for the next window of ``st`` (s16le) whose speech probability is ``prob``."""
        start = st.pos
        end = start + len(window) // SAMPLE_BYTES
        st.pos = end
        events: list[VadEvent] = []

        if not st.triggered:
            if prob < self._thr:
                st.preroll += window
                excess = len(st.preroll) - self._preroll_bytes
                if excess > 0:
                    del st.preroll[:excess]
                return events
            st.triggered = True
            st.voice_start = start
            st.buf_start = start - len(st.preroll) // SAMPLE_BYTES
            st.buffer = st.preroll + window
            st.preroll = bytearray()
            st.voiced = st.run = end - start
            st.gap = 0
            st.silence_start = -1
            st.speech_started = False
        else:
            st.buffer += window
            # Schmitt trigger: silence needs a drop below the low threshold, and only a
            # return above the high one ends it; in between, the current state holds.
            if prob >= self._thr or (prob >= self._neg_thr and st.silence_start < 0):
                st.silence_start = -1
                st.voiced += end - start
                st.run += end - start
                st.gap = 0
            else:
                if st.silence_start < 0:
                    st.silence_start = start
                    tentative = self._tentative(st)
                    if tentative is not None:
                        events.append(tentative)
                st.gap += end - start
                if st.gap > self._max_gap:
                    st.run = 0

        if not st.speech_started and st.run >= self._barge_min and st.run > 0:
            st.speech_started = True
            events.append(SpeechStarted(st.session_id, _ms(end), _ms(st.voice_start)))

        if st.silence_start >= 0 and end - st.silence_start >= self._silence:
            if events and isinstance(events[-1], SilenceStarted):
                events.pop()  # the silence window ended in the window that began it
            self._close(st, st.silence_start + self._tail, events)
        elif len(st.buffer) >= self._max_bytes:
            self._cut(st, events)
        return events

    def flush(self, st: SessionVadState) -> list[VadEvent]:
        """End the session's utterance now (client gone, session closing), if one is open.

        Audio still in ``st.remainder`` (less than one window) is not included.
        """
        events: list[VadEvent] = []
        if st.triggered:
            cut = st.silence_start + self._tail if st.silence_start >= 0 else st.pos
            self._close(st, cut, events)
        return events

    def _tentative(self, st: SessionVadState) -> SilenceStarted | None:
        """The utterance as it would be sent if the silence that just began lasts."""
        if not (self.params.tentative_ends and st.voiced >= self._min_speech and st.voiced > 0):
            return None
        # Where _close will cut: the tail, or less when the window closing the silence
        # comes first. Unless the buffer reaches max_utterance_ms before (then the
        # Utterance's bounds differ and this tentative end goes unconfirmed).
        closes_at = st.silence_start + -(-self._silence // WINDOW_SAMPLES) * WINDOW_SAMPLES
        cut = min(st.silence_start + self._tail, closes_at)
        return SilenceStarted(st.session_id, bytes(st.buffer), _ms(st.buf_start), _ms(cut),
                              _ms(st.silence_start))

    def _emit(self, st: SessionVadState, pcm: bytes, events: list[VadEvent]) -> None:
        if st.voiced >= self._min_speech and st.voiced > 0:
            end = st.buf_start + len(pcm) // SAMPLE_BYTES
            voice_end = st.silence_start if 0 <= st.silence_start < end else end
            events.append(Utterance(st.session_id, pcm, _ms(st.buf_start), _ms(end),
                                    _ms(voice_end), _ms(max(st.voice_start, st.buf_start))))

    def _close(self, st: SessionVadState, cut: int, events: list[VadEvent]) -> None:
        """End the utterance at sample ``cut``; what follows becomes pre-roll again."""
        cut = min(max(cut, st.buf_start), st.pos)
        cut_bytes = (cut - st.buf_start) * SAMPLE_BYTES
        self._emit(st, bytes(st.buffer[:cut_bytes]), events)
        # The closing silence not sent to STT is the most recent idle audio, so it is the
        # pre-roll of whatever comes next; nothing already sent is ever sent twice.
        rest = st.buffer[cut_bytes:]
        st.preroll = rest[max(0, len(rest) - self._preroll_bytes) :]
        st.buffer = bytearray()
        st.buf_start = st.pos
        st.triggered = False
        st.voiced = st.run = st.gap = 0
        st.silence_start = -1
        st.speech_started = False

    def _cut(self, st: SessionVadState, events: list[VadEvent]) -> None:
        """Send the first ``max_utterance_ms`` and carry on in the same utterance state.

        The voice is most likely still going, so the next piece starts right at the cut
        with no pre-roll (that audio has been sent) and needs its own voice to be sent or
        to count as barge-in.
        """
        self._emit(st, bytes(st.buffer[: self._max_bytes]), events)
        del st.buffer[: self._max_bytes]
        st.buf_start += self._max_bytes // SAMPLE_BYTES
        st.voice_start = st.buf_start
        st.voiced = st.run = st.gap = 0
        st.speech_started = False
