"""What every benchmark hands back: named figures (samples, median, p90, n) and notes."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.latency import STEP_EVENT


def median(samples: list[float]) -> float:
    return float(np.median(samples)) if samples else math.nan


def p90(samples: list[float]) -> float:
    """The 90th percentile, linearly interpolated (numpy's default); the value itself for n=1."""
    return float(np.percentile(samples, 90)) if samples else math.nan


@dataclass
class Figure:
    """One measured quantity: every sample kept, summarised as median and p90."""

    key: str
    label: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def p90(self) -> float:
        return p90(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, "median": _finite(self.median),
                "p90": _finite(self.p90), "n": self.n,
                "samples": [round(s, 6) for s in self.samples]}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


@dataclass
class BenchResult:
    """A benchmark's figures in display order, plus free-form details and comparison notes."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def figure(self, key: str, label: str, unit: str) -> Figure:
        """The figure ``key``, created (empty) on first use."""
        for fig in self.figures:
            if fig.key == key:
                return fig
        fig = Figure(key, label, unit)
        self.figures.append(fig)
        return fig

    def get(self, key: str) -> Figure:
        for fig in self.figures:
            if fig.key == key:
                return fig
        raise KeyError(key)

    @classmethod
    def from_json(cls, name: str, body: dict[str, Any]) -> BenchResult:
        """A result as ``to_json`` wrote it (to re-render results.md from results.json)."""
        figures = [Figure(key, f["label"], f["unit"], list(f["samples"]))
                   for key, f in body.get("figures", {}).items()]
        return cls(name, figures, dict(body.get("details", {})), list(body.get("notes", [])),
                   float(body.get("seconds", 0.0)), body.get("error"))

    def to_json(self) -> dict[str, Any]:
        return {"figures": {f.key: f.to_json() for f in self.figures},
                "details": self.details, "notes": self.notes,
                "seconds": round(self.seconds, 2), "error": self.error}


def fmt(x: float) -> str:
    """A figure for a table: about three significant digits, thousands separated."""
    if math.isnan(x):
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def step_samples(log_path: Path, since: int = 0) -> dict[str, list[float]]:
    """The 'voice turn step' lines (shared/latency.py) a stage logged from byte ``since`` on:
    per step, each spoken turn's ms since the end of the voice."""
    steps: dict[str, list[float]] = {}
    marker = STEP_EVENT.encode()
    with log_path.open("rb") as f:
        f.seek(since)
        for line in f:
            if marker not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == STEP_EVENT:
                steps.setdefault(rec["step"], []).append(float(rec["since_voice_end_ms"]))
    return steps
