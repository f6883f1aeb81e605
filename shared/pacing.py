"""How often client audio moves in bulk: the gateway's writes and the VAD's batches.

Every write and every batch costs per session it carries (an entry field, a dispatch, a
segmenter step, a publish), so the interval sets the cost per second of each live session.
A few sessions get the short interval (the least latency); a loaded process the long one,
which at 100 sessions took 18 % off the CPU of the whole pipeline for 5-9 ms more at the
median and 25-28 ms more at the 99th percentile (bench/HISTORY.md). In between, the interval
grows linearly.
"""

from __future__ import annotations

from dataclasses import dataclass

# Sessions in one write (gateway) or batch (VAD) up to which the short interval holds, and
# from which the long one does.
LIGHT_SESSIONS = 16
LOADED_SESSIONS = 64


@dataclass(frozen=True, slots=True)
class Pacing:
    """AUDIO_BATCH_MS and AUDIO_BATCH_LOADED_MS, in seconds."""

    light_s: float
    loaded_s: float

    @classmethod
    def from_ms(cls, light_ms: int, loaded_ms: int) -> Pacing:
        return cls(light_ms / 1000, loaded_ms / 1000)

    def interval_s(self, sessions: int) -> float:
        """The time from one write (or batch) to the next after one carrying ``sessions``."""
        if sessions <= LIGHT_SESSIONS:
            return self.light_s
        if sessions >= LOADED_SESSIONS:
            return self.loaded_s
        share = (sessions - LIGHT_SESSIONS) / (LOADED_SESSIONS - LIGHT_SESSIONS)
        return self.light_s + share * (self.loaded_s - self.light_s)
