"""``tts``: the piper synthesizer of the TTS service: time to first audio, and RTF."""

from __future__ import annotations

import asyncio
import time

from bench.common import BenchResult, Stopwatch

NAME = "tts"
SHORT = "Here is our menu."
LONG = ("Margherita is $8 small, $10 medium, and $12 large. "
        "Pepperoni is $9 small, $11 medium, and $13 large. "
        "Hawaiian is $9.50 small, $11.50 medium, and $13.50 large. "
        "Veggie is $9 small, $11 medium, and $13 large. "
        "Four Cheese is $10 small, $12 medium, and $14 large. What would you like?")


def run(quick: bool) -> BenchResult:
    from services.tts import piper_provider, providers
    from services.tts.providers import TtsOptions, load_synthesizer
    from shared.config import Settings

    result = BenchResult(NAME)
    n = 2 if quick else 8
    settings = Settings()
    # A real load, even when speech fixtures of an earlier benchmark loaded the voice already.
    providers._load.cache_clear()
    piper_provider._load_piper_voice.cache_clear()
    with Stopwatch() as sw:
        synthesizer = load_synthesizer(settings)
    result.figure("load_s", "voice load + warm-up", "s").samples.append(sw.seconds)
    rate = synthesizer.sample_rate
    audio_s: dict[str, float] = {}

    async def one(text: str) -> tuple[float, float, float]:
        """Seconds to the first chunk, to the last, and seconds of audio made."""
        t0 = time.perf_counter()
        first = None
        nbytes = 0
        async for chunk in synthesizer.synthesize(text):
            if first is None:
                first = time.perf_counter() - t0
            nbytes += len(chunk)
        total = time.perf_counter() - t0
        return (first if first is not None else total), total, nbytes / 2 / rate

    async def measure() -> None:
        for key, text in (("short", SHORT), ("long", LONG)):
            await one(text)  # not timed: warms this text's phonemes and shapes
            for _ in range(n):
                first, total, seconds = await one(text)
                audio_s[key] = seconds
                label = f"{key} reply ({seconds:.1f} s of audio)"
                result.figure(f"first_audio_s_{key}", f"time to first audio chunk, {label}",
                              "s").samples.append(first)
                result.figure(f"rtf_{key}", f"RTF, {label}", "x").samples.append(
                    total / seconds)

    asyncio.run(measure())
    options = TtsOptions.from_settings(settings)
    result.details = {
        "provider": options.provider, "voice": synthesizer.voice, "sample_rate": rate,
        "threads": options.threads,
        "replies": {"short": {"text": SHORT, "audio_s": round(audio_s.get("short", 0), 3)},
                    "long": {"text": LONG, "audio_s": round(audio_s.get("long", 0), 3)}},
    }
    result.notes.append("Replies are synthesised sentence by sentence, the first sentence's "
                        "opening clause on its own (services/tts/text.py speech_pieces): a "
                        "long reply's first audio depends on its first few words only.")
    result.notes.append("Published (offline-models.md, AMD EPYC, one core): RTF 0.045; first "
                        "audio of a 2-3 s sentence after 0.09-0.14 s warm.")
    return result
