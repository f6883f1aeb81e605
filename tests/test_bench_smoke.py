"""The benchmark harness runs and writes its files; its figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.voice  # the VAD and TTS benchmarks load the offline models

FIGURE_KEYS = {"label", "unit", "median", "p90", "n", "samples"}


def test_quick_bench_writes_results_with_the_expected_keys(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "vad,tts", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    assert {"date", "machine", "git_commit", "quick", "only", "seconds",
            "benchmarks"} <= doc.keys()
    assert doc["quick"] is True and doc["only"] == ["vad", "tts"]
    assert {"nproc", "cpu_model"} <= doc["machine"].keys()
    assert set(doc["benchmarks"]) == {"vad", "tts"}
    for name, expected in (("vad", {"engine_streams_per_core_b1",
                                    "engine_streams_per_core_b256",
                                    "model_streams_per_core_b16"}),
                           ("tts", {"first_audio_s_short", "first_audio_s_long",
                                    "rtf_short", "rtf_long"})):
        bench = doc["benchmarks"][name]
        assert bench["error"] is None
        assert expected <= bench["figures"].keys()
        for figure in bench["figures"].values():
            assert FIGURE_KEYS <= figure.keys()
            assert figure["n"] == len(figure["samples"]) >= 1

    md = (out / "results.md").read_text()
    assert "| benchmark | figure | median | p90 | n | unit |" in md
    assert "Date:" in md and "Machine:" in md and "Git commit:" in md
    assert "| vad |" in md and "| tts |" in md
    # Only the temporary directory was written: the committed results stay as they are.
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]


def test_vad_alone_bench_hears_every_utterance_of_one_session(tmp_path: Path) -> None:
    """The VAD-alone benchmark drives a real vad-worker through Redis the way the gateway's
    audio ingest does; with one session nothing may be lost or shed, or its figures for
    hundreds mean nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.vad_alone", "--sessions", "1", "--seconds", "9",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((tmp_path / "results.json").read_text())["benchmarks"]["vad_alone"]
    row = run["details"]["runs"][0]
    assert row["n"] == 1
    assert row["utterances"] >= 1
    assert row["lost"] == 0 and row["extra_entries"] == 0 and row["shed_entries"] == 0
