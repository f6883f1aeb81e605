"""Deterministic markers in a user message that let the orchestrator's tests steer the agent.

- the word ``slowly``: wait before the first event, ``[delay=N]`` seconds or 3 s by default
  (a bare ``[delay=N]`` also waits);
- ``[stream=N]``: N CustomerResponse events "Part i of N.", one every 0.5 s;
- ``[fail]``: a single ``{"error": "demo failure"}`` event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DELAY_S = 3.0
MAX_DELAY_S = 300.0
MAX_PARTS = 1000
PART_INTERVAL_S = 0.5

_DELAY = re.compile(r"\[delay=(\d+(?:\.\d+)?)\]", re.IGNORECASE)
_STREAM = re.compile(r"\[stream=(\d+)\]", re.IGNORECASE)
_FAIL = re.compile(r"\[fail\]", re.IGNORECASE)
_SLOWLY = re.compile(r"\bslowly\b", re.IGNORECASE)


@dataclass(frozen=True)
class Hooks:
    delay_s: float
    parts: int | None
    fail: bool
    text: str  # the message with the markers taken out


def parse(text: str) -> Hooks:
    delay_m = _DELAY.search(text)
    stream_m = _STREAM.search(text)
    delay = 0.0
    if delay_m:
        delay = float(delay_m.group(1))
    elif _SLOWLY.search(text):
        delay = DEFAULT_DELAY_S
    parts = min(int(stream_m.group(1)), MAX_PARTS) if stream_m else None
    cleaned = _FAIL.sub(" ", _STREAM.sub(" ", _DELAY.sub(" ", text)))
    return Hooks(
        delay_s=min(delay, MAX_DELAY_S),
        parts=parts,
        fail=_FAIL.search(text) is not None,
        text=re.sub(r"\s+", " ", cleaned).strip(),
    )
