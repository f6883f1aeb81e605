"""What the fault benchmark's driver saw, turned into per-turn verdicts and per-trial figures.

Pure functions over the driver's output (``bench/fault_driver.py``) and the trial schedule, so
they can be re-run on a saved dump (``python -m bench.faults --analyse DUMP.json``).

A turn is one utterance, named by its token ``s<session>u<utterance>`` (``fault_fakes``). The
replies that answer it are the distinct audio replies (fake TTS tag texts) naming its token:

- lost: no audio naming it within LOSS_S of its end;
- duplicated: named by more than one reply, any chunk of such a reply received twice, or more
  than one agent text naming it (the user hears or reads an answer twice);
- merged: a reply naming it names another utterance too (two utterances, one answer);
- wait: end of speech -> the first audio naming it; for a lost turn, -> the session's next
  audio of any kind (or the end of the run). The longest wait is the trial's max stall;
- normal: answered within the baseline's p99 + 0.5 s, neither duplicated nor merged.

A turn counts in the trial whose fault came last before its answer (end + wait, at most
LOSS_S), so a turn in flight when the fault struck is the fault's even if its speech ended
just before.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import fault_fakes
from shared import topology

LOSS_S = 15.0
NORMAL_SLACK_S = 0.5


@dataclass
class TurnVerdict:
    session: int
    utt: int
    end: float
    first_audio: float | None
    wait: float
    lost: bool
    duplicated: bool
    merged: bool
    replies: list[str]
    normal: bool = False

    @property
    def settled(self) -> float:
        """When the turn was answered, or given up on as lost."""
        return self.end + min(self.wait, LOSS_S)

    @property
    def latency(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.end


@dataclass
class SessionView:
    index: int
    turns: list[TurnVerdict]
    guids: list[tuple[float, str]]  # (first seen, guid) per connection
    clears: list[float]
    errors: list[list[Any]]
    closes: list[float]
    crosstalk: list[tuple[float, str]] = field(default_factory=list)
    unmarked: list[float] = field(default_factory=list)

    def guid_at(self, t: float) -> str | None:
        """The session id in use at ``t`` (the last one seen before, else the first after)."""
        before = [g for seen, g in self.guids if seen <= t]
        if before:
            return before[-1]
        return self.guids[0][1] if self.guids else None


def verdicts(raw: dict[str, Any], run_end: float) -> list[SessionView]:
    views = []
    for s in raw["sessions"]:
        idx = s["index"]
        first_seen: dict[str, float] = {}
        chunks: Counter[tuple[str, int]] = Counter()
        audio_times: list[float] = []
        for t, text, index in s["audio"]:
            audio_times.append(t)
            if text:
                first_seen.setdefault(text, t)
                chunks[(text, index)] += 1
        by_token: dict[str, list[str]] = {}
        crosstalk: list[tuple[float, str]] = []
        unmarked: list[float] = []
        for text, t in first_seen.items():
            toks = fault_fakes.tokens(text)
            for tok in toks:
                by_token.setdefault(tok, []).append(text)
                if tok != fault_fakes.UNMARKED and not tok.startswith(f"s{idx}u"):
                    crosstalk.append((t, text))
            if fault_fakes.UNMARKED in toks:
                unmarked.append(t)
        agent_count: Counter[str] = Counter()
        guids: list[tuple[float, str]] = []
        for t, text in s["agent"]:
            parts = text.split(" ")
            if len(parts) >= 2 and parts[0] == fault_fakes.REPLY_PREFIX:
                if not guids or guids[-1][1] != parts[1]:
                    guids.append((t, parts[1]))
            for tok in set(fault_fakes.tokens(text)):
                agent_count[tok] += 1
        audio_times.sort()
        turns = []
        for utt, end in s["utterances"]:
            tok = f"s{idx}u{utt}"
            texts = by_token.get(tok, [])
            first = min((first_seen[x] for x in texts), default=None)
            lost = first is None or first - end > LOSS_S
            dup = (len(texts) > 1 or agent_count[tok] > 1
                   or any(n > 1 for (text, _), n in chunks.items() if text in texts))
            merged = any(len(fault_fakes.tokens(x)) > 1 for x in texts)
            if first is not None:
                wait = first - end
            else:
                later = [t for t in audio_times if t > end]
                wait = (later[0] if later else run_end) - end
            turns.append(TurnVerdict(idx, utt, end, first, wait, lost, dup, merged, texts))
        views.append(SessionView(idx, turns, guids, s["clears"], s["errors"], s["closes"],
                                 crosstalk, unmarked))
    return views


def baseline_normal_s(views: list[SessionView], t_from: float, t_to: float) -> tuple[float,
                                                                                       float]:
    """(p99 latency of the baseline window, the 'normal' bound derived from it)."""
    lat = [t.latency for v in views for t in v.turns
           if t_from <= t.end < t_to and t.latency is not None and not t.lost]
    p99 = float(np.percentile(lat, 99)) if lat else 1.0
    return p99, p99 + NORMAL_SLACK_S


def mark_normal(views: list[SessionView], normal_s: float) -> None:
    for v in views:
        for t in v.turns:
            t.normal = (not t.lost and not t.duplicated and not t.merged
                        and t.latency is not None and t.latency <= normal_s)


def affected(views: list[SessionView], trial: dict[str, Any]) -> list[int]:
    """Sessions the fault touched: all for Redis; else those whose partition the target
    replica held (the lease snapshot taken just before the fault)."""
    holders: dict[str, str] | None = trial.get("holders")
    if holders is None:
        return [v.index for v in views]
    out = []
    for v in views:
        guid = v.guid_at(trial["t"])
        if guid is not None and holders.get(str(topology.partition_of(guid))) == \
                trial["target"]:
            out.append(v.index)
    return out


def trial_stats(views: list[SessionView], trial: dict[str, Any], t_to: float) -> dict[str, Any]:
    t_f = trial["t"]
    restart = trial.get("restored_t", t_to)
    # A turn belongs to the fault it met: answered (or given up on) after the fault, before
    # the next one; a turn in flight when the fault struck counts, even if it ended before.
    turns = [t for v in views for t in v.turns if t_f <= t.settled < t_to]
    hit = affected(views, trial)
    recov: list[float] = []
    unrecovered = 0
    for v in views:
        if v.index not in hit:
            continue
        first_normal = next((t for t in v.turns if t.end >= t_f and t.normal), None)
        if first_normal is None or first_normal.first_audio is None:
            unrecovered += 1
        else:
            recov.append(first_normal.first_audio - t_f)

    def count(pred: Any, after: float = -math.inf) -> int:
        return sum(1 for t in turns if pred(t) and t.settled >= after)

    bad = [t for t in turns if t.lost or t.duplicated or t.merged]
    return {
        "fault": trial["fault"], "target": trial.get("target"), "t": round(t_f, 2),
        "restored_t": trial.get("restored_t"), "until_t": round(t_to, 2),
        "turns": len(turns), "lost": count(lambda t: t.lost),
        "duplicated": count(lambda t: t.duplicated), "merged": count(lambda t: t.merged),
        "bad_after_restore": count(lambda t: t.lost or t.duplicated or t.merged, restart),
        "max_stall_s": round(max((t.wait for t in turns), default=math.nan), 3),
        "affected_sessions": len(hit),
        "recovery_s": round(max(recov), 3) if recov else None,
        "unrecovered_sessions": unrecovered,
        "clears": sum(1 for v in views for c in v.clears if t_f <= c < t_to),
        "errors": sum(1 for v in views for e in v.errors if t_f <= e[0] < t_to),
        "closes": sum(1 for v in views for c in v.closes if t_f <= c < t_to),
        "crosstalk": sum(1 for v in views for c in v.crosstalk if t_f <= c[0] < t_to),
        "unmarked_replies": sum(1 for v in views for u in v.unmarked if t_f <= u < t_to),
        "bad_turns": [{"session": t.session, "utt": t.utt, "end": round(t.end, 2),
                       "wait_s": round(t.wait, 2), "lost": t.lost, "duplicated": t.duplicated,
                       "merged": t.merged, "replies": t.replies[:4]} for t in bad[:40]],
    }


def window_stats(views: list[SessionView], t_from: float, t_to: float) -> dict[str, Any]:
    """The same counts for a window with no fault (the baseline)."""
    return trial_stats(views, {"fault": "none", "t": t_from, "holders": {}, "target": None},
                       t_to)
