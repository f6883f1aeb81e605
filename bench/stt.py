"""``stt``: the STT service's model, called directly on piper-made utterances: decode time and
word error rate, with the configured encoder window and with Whisper's full 30 s window."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bench.common import BenchResult, Stopwatch

if TYPE_CHECKING:
    from services.stt.protocols import Transcriber

NAME = "stt"
# (key, sentence): about 1.5 s and about 4 s of speech from the bundled piper voice.
UTTERANCES = (
    ("short", "Can I have a large pepperoni?"),
    ("long", "I would like a large pepperoni pizza and a small veggie pizza, please."),
)
# As the VAD sends them: 300 ms of pre-roll before the speech, 150 ms of tail after it.
PREROLL_MS, TAIL_MS = 300, 150
FULL_WINDOW_S = 30


def run(quick: bool) -> BenchResult:
    from services.stt import providers
    from services.stt.protocols import Transcriber
    from services.stt.providers import SttOptions, load_transcriber
    from shared.config import Settings
    from tests.speech_fixtures import SENTENCES, silence, synthesize_pcm16k

    result = BenchResult(NAME)
    n = 2 if quick else 8
    settings = Settings()
    configs = [("", settings)]
    if settings.STT_WINDOW_S < FULL_WINDOW_S:
        configs.append(("_full", settings.model_copy(update={"STT_WINDOW_S": FULL_WINDOW_S})))

    def vad_cut(text: str) -> bytes:
        return silence(PREROLL_MS) + synthesize_pcm16k(text) + silence(TAIL_MS)

    audio = {key: vad_cut(text) for key, text in UTTERANCES}
    corpus = SENTENCES[:4] if quick else SENTENCES
    corpus_audio = [vad_cut(text) for text in corpus]
    details: dict[str, object] = {}
    for suffix, config in configs:
        window = f"{config.STT_WINDOW_S} s window" if suffix else "configured"
        providers._load.cache_clear()  # a real load, whatever ran before in this process
        with Stopwatch() as sw:
            transcriber = load_transcriber(config)
        assert isinstance(transcriber, Transcriber), "the benchmark decodes whole utterances"
        if not suffix:
            result.figure("load_s", "model load + warm-up", "s").samples.append(sw.seconds)
        transcripts, errors, words, wrong = asyncio.run(_measure(
            result, transcriber, suffix, f" ({window})" if suffix else "", audio,
            list(zip(corpus, corpus_audio, strict=True)), n))
        result.figure(f"wer{suffix}", f"word error rate, {len(corpus)} fixture sentences"
                      + (f" ({window})" if suffix else ""), "%").samples.append(
            100 * errors / max(words, 1))
        options = SttOptions.from_settings(config)
        details[window] = {
            "window_s": options.window_s, "word_errors": errors, "words": words,
            "misheard": wrong,
            "utterances": {key: {"text": text, "seconds": round(len(audio[key]) / 32000, 3),
                                 "transcript": transcripts.get(key, "")}
                           for key, text in UTTERANCES}}
    options = SttOptions.from_settings(settings)
    result.details = {"provider": options.provider, "model": options.model,
                      "cpu_threads": options.cpu_threads,
                      "beam_size": options.beam_size or "provider default", **details}
    result.notes.append(f"Utterances as the VAD cuts them ({PREROLL_MS} ms of silence before, "
                        f"{TAIL_MS} ms after). The full-window rows are Whisper's own 30 s "
                        "window (STT_WINDOW_S=30, the setting before the window was "
                        "shortened), measured in the same run.")
    result.notes.append("Published (offline-models.md, AMD EPYC, one core): about 0.35 s per "
                        "utterance whatever its length; RTF 0.14 on 2-3 s clips.")
    return result


async def _measure(result: BenchResult, transcriber: Transcriber, suffix: str, tag: str,
                   audio: dict[str, bytes], corpus: list[tuple[str, bytes]],
                   n: int) -> tuple[dict[str, str], int, int, list[str]]:
    """Time the two utterances, then transcribe the corpus: (transcripts, word errors,
    words, what was misheard)."""
    transcripts: dict[str, str] = {}
    for key, _ in UTTERANCES:
        pcm = audio[key]
        duration = len(pcm) / 32000
        label = f"~{duration:.1f} s utterance"
        transcripts[key] = await transcriber.transcribe(pcm)  # not timed: one more warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            transcripts[key] = await transcriber.transcribe(pcm)
            took = time.perf_counter() - t0
            result.figure(f"decode_s_{key}{suffix}", f"decode time, {label}{tag}",
                          "s").samples.append(took)
            if not suffix:
                result.figure(f"rtf_{key}", f"RTF, {label}", "x").samples.append(
                    took / duration)
    errors = words = 0
    wrong: list[str] = []
    for text, pcm in corpus:
        heard = await transcriber.transcribe(pcm)
        wrong_words, n_words = word_errors(text, heard)
        errors, words = errors + wrong_words, words + n_words
        if wrong_words:
            wrong.append(f"{text!r} -> {heard!r}")
    return transcripts, errors, words, wrong


def word_errors(reference: str, heard: str) -> tuple[int, int]:
    """Word-level edit distance (case and punctuation aside) and the reference's word count."""
    ref, hyp = _norm(reference).split(), _norm(heard).split()
    row = list(range(len(hyp) + 1))
    for i, r_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h_word in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                           diagonal + (r_word != h_word))
    return row[len(hyp)], len(ref)


def _norm(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch == " ").split())
