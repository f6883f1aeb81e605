"""``stt``: the STT service's model, called directly on piper-made utterances."""

from __future__ import annotations

import asyncio
import time

from bench.common import BenchResult, Stopwatch

NAME = "stt"
# (key, sentence): about 1.5 s and about 4 s of speech from the bundled piper voice.
UTTERANCES = (
    ("short", "Can I have a large pepperoni?"),
    ("long", "I would like a large pepperoni pizza and a small veggie pizza, please."),
)


def run(quick: bool) -> BenchResult:
    from services.stt import providers
    from services.stt.protocols import Transcriber
    from services.stt.providers import SttOptions, load_transcriber
    from shared.config import Settings
    from tests.speech_fixtures import synthesize_pcm16k

    result = BenchResult(NAME)
    n = 2 if quick else 8
    settings = Settings()
    audio = {key: synthesize_pcm16k(text) for key, text in UTTERANCES}
    providers._load.cache_clear()  # a real load, whatever ran before in this process
    with Stopwatch() as sw:
        transcriber = load_transcriber(settings)
    assert isinstance(transcriber, Transcriber), "the benchmark decodes whole utterances"
    result.figure("load_s", "model load + warm-up", "s").samples.append(sw.seconds)

    transcripts: dict[str, str] = {}

    async def measure() -> None:
        for key, _ in UTTERANCES:
            pcm = audio[key]
            duration = len(pcm) / 32000
            label = f"~{duration:.1f} s utterance"
            transcripts[key] = await transcriber.transcribe(pcm)  # not timed: one more warm-up
            for _ in range(n):
                t0 = time.perf_counter()
                said = await transcriber.transcribe(pcm)
                took = time.perf_counter() - t0
                result.figure(f"decode_s_{key}", f"decode time, {label}", "s").samples.append(
                    took)
                result.figure(f"rtf_{key}", f"RTF, {label}", "x").samples.append(
                    took / duration)
                transcripts[key] = said

    asyncio.run(measure())
    options = SttOptions.from_settings(settings)
    result.details = {
        "provider": options.provider, "model": options.model, "cpu_threads": options.cpu_threads,
        "beam_size": options.beam_size or "provider default",
        "utterances": {key: {"text": text, "seconds": round(len(audio[key]) / 32000, 3),
                             "transcript": transcripts.get(key, "")}
                       for key, text in UTTERANCES},
    }
    exact = sum(_norm(transcripts.get(k, "")) == _norm(t) for k, t in UTTERANCES)
    result.notes.append(f"Transcripts matching the text exactly (case, punctuation aside): "
                        f"{exact}/{len(UTTERANCES)}.")
    result.notes.append("Published (offline-models.md, AMD EPYC, one core): about 0.35 s per "
                        "utterance whatever its length; RTF 0.14 on 2-3 s clips.")
    return result


def _norm(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch == " ").split())
