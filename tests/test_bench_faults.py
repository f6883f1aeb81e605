"""The fault benchmark tells which utterances a reply answers: marks in the audio survive any
cut the VAD makes, and the verdicts (lost, duplicated, merged) follow from what a client saw."""

from __future__ import annotations

import numpy as np

from bench import fault_analysis, fault_fakes


def _speech(seconds: float, seed: int) -> bytes:
    frames = round(seconds * 16000) // fault_fakes.FRAME_SAMPLES
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, frames * fault_fakes.FRAME_SAMPLES).astype("<i2").tobytes()


def test_marks_survive_any_cut_and_name_every_utterance_joined() -> None:
    a = fault_fakes.watermark(_speech(1.5, 1), 3, 12)
    b = fault_fakes.watermark(_speech(1.5, 2), 3, 13)
    silence = bytes(9600)
    # Cut at odd sample offsets, with pre-roll and tail silence, as the VAD cuts.
    assert fault_fakes.transcript_of(silence + a[202:-46] + silence[:4800]) == "s3u12"
    assert fault_fakes.transcript_of(a[1000:] + silence + b[:6000]) == "s3u12 s3u13"
    assert fault_fakes.transcript_of(_speech(1.0, 3)) == fault_fakes.UNMARKED


def test_the_fake_agent_answers_every_user_message_since_its_last_reply() -> None:
    history = [{"role": "user", "content": "s1u1"}, {"role": "assistant", "content": "re g s1u1"},
               {"role": "user", "content": "s1u2"}, {"role": "user", "content": "s1u3 s1u4"}]
    assert fault_fakes.reply_to(history, "g") == "re g s1u2 s1u3 s1u4"
    assert fault_fakes.parse_tag(fault_fakes.tag_chunk("re g s1u2", 2)) == ("re g s1u2", 2)


def test_verdicts_tell_lost_duplicated_and_merged_turns() -> None:
    def chunks(t: float, text: str) -> list[list[object]]:
        return [[t + 0.1 * i, text, i] for i in range(3)]

    raw = {"sessions": [{
        "index": 0, "utterances": [[0, 1.0], [1, 5.0], [2, 9.0], [3, 13.0], [4, 17.0]],
        "audio": [*chunks(1.4, "re g s0u0"), *chunks(9.5, "re g s0u1 s0u2"),
                  *chunks(13.4, "re g s0u3"), *chunks(14.0, "re g s0u3")],
        "agent": [[1.4, "re g s0u0"], [9.5, "re g s0u1 s0u2"], [13.4, "re g s0u3"]],
        "user": [], "clears": [], "errors": [], "closes": [], "connects": []}]}
    (view,) = fault_analysis.verdicts(raw, run_end=40.0)
    by_utt = {t.utt: t for t in view.turns}
    assert not (by_utt[0].lost or by_utt[0].merged or by_utt[0].duplicated)
    assert by_utt[1].merged and by_utt[2].merged and not by_utt[1].lost
    assert round(by_utt[1].wait, 1) == 4.5
    assert by_utt[3].duplicated and not by_utt[3].merged
    assert by_utt[4].lost and by_utt[4].wait == 40.0 - 17.0
    assert view.guid_at(10.0) == "g"
