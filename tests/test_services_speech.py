"""The STT and TTS services on real sockets, with the real offline models (loaded once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect

from services.stt import create_app as create_stt_app
from services.stt import load_transcriber
from services.stt.protocols import Transcriber
from services.tts import create_app as create_tts_app
from services.tts import load_synthesizer
from services.tts.cache import AudioCache, CacheKey
from services.tts.protocols import Synthesizer
from services.tts.text import speech_pieces, split_sentences
from shared.config import Settings
from tests.fakes import serve as serve_fake
from tests.speech_fixtures import noise, silence, synthesize_pcm16k

pytestmark = pytest.mark.voice

PIZZA = "Hello, I would like to order a large pepperoni pizza."
LONG_REPLY = " ".join(
    f"This is sentence number {i} of a long reply, and it keeps on going for a while."
    for i in range(1, 25))
RATE = 16_000
CHUNK_BYTES = RATE * 100 // 1000 * 2
DONE = {"action": "done"}


# --- servers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """The service ``app`` running (its lifespan loads the model); yield ``host:port``."""
    async with serve_fake(app, lifespan="on") as url:
        yield url.removeprefix("http://")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # model_validate skips the environment: the tests must not depend on the caller's shell.
    cache_dir = tmp_path_factory.mktemp("tts-cache")
    return Settings.model_validate({"TTS_CACHE_DIR": str(cache_dir)})


@pytest.fixture(scope="session")
def transcriber(settings: Settings) -> Transcriber:
    started = time.perf_counter()
    loaded = load_transcriber(settings)
    assert isinstance(loaded, Transcriber)
    print(f"\nSTT load + warm-up: {time.perf_counter() - started:.2f} s")
    return loaded


@pytest.fixture(scope="session")
def synthesizer(settings: Settings) -> Synthesizer:
    started = time.perf_counter()
    loaded = load_synthesizer(settings)
    print(f"\nTTS load + warm-up: {time.perf_counter() - started:.2f} s")
    return loaded


@pytest.fixture(scope="session")
async def stt_url(settings: Settings, transcriber: Transcriber) -> AsyncIterator[str]:
    async with serve(create_stt_app(settings, transcriber)) as address:
        yield f"ws://{address}{settings.STT_PATH}"


@dataclass
class TtsServer:
    url: str
    base: str
    cache: AudioCache
    synthesizer: Synthesizer

    def key(self, text: str) -> CacheKey:
        s = self.synthesizer
        return CacheKey(s.provider, s.voice, s.sample_rate, text)


@pytest.fixture(scope="session")
async def tts(settings: Settings, synthesizer: Synthesizer) -> AsyncIterator[TtsServer]:
    app = create_tts_app(settings, synthesizer)
    async with serve(app) as address:
        yield TtsServer(f"ws://{address}{settings.TTS_PATH}", f"http://{address}",
                        app.state.tts.cache, synthesizer)


# --- helpers ----------------------------------------------------------------------------------


async def transcribe(ws: ClientConnection, pcm: bytes) -> str:
    await ws.send(pcm)
    answer = await asyncio.wait_for(ws.recv(), timeout=30)
    assert isinstance(answer, str)
    return answer


async def synthesize(ws: ClientConnection, text: str) -> None:
    await ws.send(json.dumps({"action": "synthesize", "text": text}))


async def until_text(ws: ClientConnection) -> tuple[list[bytes], str]:
    """Binary frames up to the next text frame, and that text frame."""
    chunks: list[bytes] = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout=60)
        if isinstance(frame, str):
            return chunks, frame
        chunks.append(frame)


async def until_quiet(ws: ClientConnection, quiet_s: float) -> list[str | bytes]:
    """Every frame that arrives until none has for ``quiet_s``."""
    frames: list[str | bytes] = []
    while True:
        try:
            frames.append(await asyncio.wait_for(ws.recv(), timeout=quiet_s))
        except TimeoutError:
            return frames


def seconds(chunks: list[bytes]) -> float:
    return sum(len(c) for c in chunks) / (2 * RATE)


# --- STT --------------------------------------------------------------------------------------


async def test_stt_transcribes_speech(stt_url: str) -> None:
    pcm = synthesize_pcm16k(PIZZA)
    async with connect(stt_url) as ws:
        started = time.perf_counter()
        text = await transcribe(ws, pcm)
        print(f"\nSTT round trip for {len(pcm) / 2 / RATE:.2f} s of speech:"
              f" {time.perf_counter() - started:.3f} s -> {text!r}")
    assert "pizza" in text.lower()
    assert "pepperoni" in text.lower()


async def test_stt_speech_padded_with_silence(stt_url: str) -> None:
    async with connect(stt_url) as ws:
        text = await transcribe(ws, silence(500) + synthesize_pcm16k(PIZZA) + silence(800))
    assert "pizza" in text.lower()


async def test_stt_silence_and_noise_give_empty_transcripts(stt_url: str) -> None:
    async with connect(stt_url) as ws:
        assert await transcribe(ws, silence(2000)) == ""
        # Loud enough to reach Whisper, which would otherwise answer "You" or ". . .".
        assert await transcribe(ws, noise(2000, amplitude=1000, seed=1)) == ""


async def test_stt_bad_utterances_answer_empty_and_keep_the_connection(stt_url: str) -> None:
    async with connect(stt_url) as ws:
        assert await transcribe(ws, b"\x01\x02\x03") == ""  # odd length
        assert await transcribe(ws, b"") == ""
        assert await transcribe(ws, silence(61_000)) == ""  # over the 60 s limit
        await ws.send("a text frame is not part of the protocol")
        assert "pizza" in (await transcribe(ws, synthesize_pcm16k(PIZZA))).lower()


async def test_stt_answers_pipelined_utterances_in_order(stt_url: str) -> None:
    async with connect(stt_url) as ws:
        await ws.send(synthesize_pcm16k(PIZZA))
        await ws.send(silence(1000))
        await ws.send(synthesize_pcm16k("Can I get extra cheese?"))
        answers = [await asyncio.wait_for(ws.recv(), timeout=30) for _ in range(3)]
    assert "pizza" in str(answers[0]).lower()
    assert answers[1] == ""
    assert "cheese" in str(answers[2]).lower()


async def test_stt_serves_connections_concurrently(stt_url: str) -> None:
    async def one(text: str) -> str:
        async with connect(stt_url) as ws:
            return await transcribe(ws, synthesize_pcm16k(text))

    first, second = await asyncio.gather(one(PIZZA), one("Can I get extra cheese?"))
    assert "pizza" in first.lower()
    assert "cheese" in second.lower()


def test_stt_short_window_loops_are_decoded_again_on_the_full_window() -> None:
    # A 1 s minimum window is far too short for tiny.en: it loops ("Yes. Yes. Yes. Yes.",
    # "Can I get extra cheese? Can I get extra"), and those decodes are redone on 30 s.
    from services.stt.whisper_provider import (
        FasterWhisperTranscriber,
        looks_like_a_loop,
        resolve_model_dir,
    )

    short = FasterWhisperTranscriber.load(resolve_model_dir("tiny.en"), window_s=1)
    for text in ("Yes.", "Can I get extra cheese?", "Can I have a large pepperoni?"):
        heard = short.transcribe_sync(silence(300) + synthesize_pcm16k(text) + silence(150))
        assert heard.lower().rstrip(".?") == text.lower().rstrip(".?"), heard
    assert looks_like_a_loop("Yes. Yes. Yes. Yes.") and looks_like_a_loop("a b c a b c")
    assert not looks_like_a_loop("It is what it is.") and not looks_like_a_loop("Yes, yes.")


def test_stt_unknown_provider_fails_at_start() -> None:
    settings = Settings.model_validate({"STT_PROVIDER": "nope"})
    with pytest.raises(ValueError, match="faster_whisper"):
        create_stt_app(settings)


# --- TTS --------------------------------------------------------------------------------------


async def test_tts_streams_small_even_chunks_then_done(tts: TtsServer) -> None:
    async with connect(tts.url) as ws:
        started = time.perf_counter()
        await synthesize(ws, PIZZA)
        first = await asyncio.wait_for(ws.recv(), timeout=30)
        first_audio_s = time.perf_counter() - started
        assert isinstance(first, bytes)
        rest, text = await until_text(ws)
        total_s = time.perf_counter() - started
    chunks = [first, *rest]
    print(f"\nTTS first audio {first_audio_s:.3f} s, all {seconds(chunks):.2f} s of audio "
          f"in {total_s:.3f} s (RTF {total_s / seconds(chunks):.3f})")
    assert json.loads(text) == DONE
    assert all(len(c) % 2 == 0 and 0 < len(c) <= CHUNK_BYTES for c in chunks)
    assert 1.5 < seconds(chunks) < 6.0


async def test_tts_audio_is_understood_by_stt(tts: TtsServer, stt_url: str) -> None:
    text = "Please deliver it to twelve Baker Street."
    async with connect(tts.url) as ws:
        await synthesize(ws, text)
        chunks, done = await until_text(ws)
    assert json.loads(done) == DONE
    async with connect(stt_url) as ws:
        heard = await transcribe(ws, b"".join(chunks))
    assert "baker street" in heard.lower()


async def test_tts_splits_sentences_and_sends_first_audio_early(tts: TtsServer) -> None:
    text = "Sure. " + LONG_REPLY
    async with connect(tts.url) as ws:
        started = time.perf_counter()
        await synthesize(ws, text)
        await asyncio.wait_for(ws.recv(), timeout=30)
        first_audio_s = time.perf_counter() - started
        chunks, done = await until_text(ws)
        total_s = time.perf_counter() - started
    assert json.loads(done) == DONE
    print(f"\nTTS long reply: first audio {first_audio_s:.3f} s, done after {total_s:.3f} s "
          f"for {seconds(chunks):.1f} s of audio")
    # Audio leaves sentence by sentence, the first sentence's opening clause on its own:
    # the first one is not held back for the rest (the latency itself is measured by
    # `make bench`, not asserted here).
    blocks = [b async for b in tts.synthesizer.synthesize(text)]
    assert len(blocks) == len(speech_pieces(text)) >= len(split_sentences(text)) > 1


async def test_tts_cancel_stops_promptly_without_done(tts: TtsServer) -> None:
    async with connect(tts.url) as ws:
        await synthesize(ws, LONG_REPLY)
        first = await asyncio.wait_for(ws.recv(), timeout=30)
        assert isinstance(first, bytes)
        cancelled_at = time.perf_counter()
        await ws.send(json.dumps({"action": "cancel"}))
        stragglers = await until_quiet(ws, quiet_s=1.0)
        assert all(isinstance(f, bytes) for f in stragglers), "a cancelled synthesis sent done"
        # LONG_REPLY is over a minute of speech; only what was already sent may arrive.
        assert seconds([first, *(f for f in stragglers if isinstance(f, bytes))]) < 15
        print(f"\nTTS cancel: {len(stragglers)} chunks arrived after it "
              f"({time.perf_counter() - cancelled_at - 1.0:.3f} s before quiet)")

        await synthesize(ws, "Okay.")
        chunks, done = await until_text(ws)
        assert chunks
        assert json.loads(done) == DONE


async def test_tts_new_synthesize_replaces_the_one_in_flight(tts: TtsServer) -> None:
    async with connect(tts.url) as ws:
        await synthesize(ws, "Replacing: " + LONG_REPLY)
        assert isinstance(await asyncio.wait_for(ws.recv(), timeout=30), bytes)
        await synthesize(ws, "Never mind.")
        _, done = await until_text(ws)
        assert json.loads(done) == DONE
        assert await until_quiet(ws, quiet_s=0.5) == []
    assert tts.key("Replacing: " + LONG_REPLY) not in tts.cache


async def test_tts_repeat_is_served_from_cache(tts: TtsServer) -> None:
    text = "Your order number is forty two."
    async with connect(tts.url) as ws:
        hits = tts.cache.hits
        await synthesize(ws, text)
        first, done1 = await until_text(ws)
        assert tts.cache.hits == hits
        await synthesize(ws, text)
        second, done2 = await until_text(ws)
    assert json.loads(done1) == json.loads(done2) == DONE
    assert tts.cache.hits == hits + 1
    # The service samples noise, so a fresh synthesis would differ: equal bytes mean cache.
    assert b"".join(first) == b"".join(second)
    assert tts.key(text) in tts.cache

    # The disk copy outlives the process's memory.
    assert tts.cache.directory is not None
    reopened = AudioCache(tts.cache.directory)
    assert await reopened.get(tts.key(text)) == b"".join(first)


async def test_tts_cancelled_synthesis_is_not_cached(tts: TtsServer) -> None:
    text = "Not to be cached. " + LONG_REPLY
    async with connect(tts.url) as ws:
        await synthesize(ws, text)
        assert isinstance(await asyncio.wait_for(ws.recv(), timeout=30), bytes)
        await ws.send(json.dumps({"action": "cancel"}))
        await until_quiet(ws, quiet_s=0.5)
    assert tts.key(text) not in tts.cache
    assert tts.cache.directory is not None
    assert not (Path(tts.cache.directory) / tts.key(text).filename()).exists()


async def test_tts_ignores_malformed_and_unknown_messages(tts: TtsServer) -> None:
    async with connect(tts.url) as ws:
        for bad in ("not json", "[1, 2]", '{"action": "dance"}', '{"action": "synthesize"}',
                    '{"action": "synthesize", "text": 5}'):
            await ws.send(bad)
        await ws.send(b"\x00\x01")
        await ws.send(json.dumps({"action": "cancel"}))  # nothing in flight: a no-op
        assert await until_quiet(ws, quiet_s=0.3) == []
        await synthesize(ws, "Still here.")
        chunks, done = await until_text(ws)
    assert chunks
    assert json.loads(done) == DONE


async def test_tts_blank_text_gives_done_alone(tts: TtsServer) -> None:
    async with connect(tts.url) as ws:
        await synthesize(ws, "   ")
        chunks, done = await until_text(ws)
    assert chunks == []
    assert json.loads(done) == DONE


async def test_health_endpoints(tts: TtsServer, stt_url: str) -> None:
    stt_base = "http://" + stt_url.removeprefix("ws://").split("/", 1)[0]
    async with httpx.AsyncClient() as client:
        for base in (tts.base, stt_base):
            assert (await client.get(f"{base}/healthz")).status_code == 200
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True}


async def test_apps_load_their_models_at_start_up(settings: Settings,
                                                  transcriber: Transcriber,
                                                  synthesizer: Synthesizer) -> None:
    # Without an injected engine the lifespan loads one; the loaders' per-process cache
    # makes that the session's already-loaded model.
    stt_app, tts_app = create_stt_app(settings), create_tts_app(settings)
    assert stt_app.state.stt.transcriber is None
    assert tts_app.state.tts.synthesizer is None
    async with serve(stt_app) as stt_address, serve(tts_app) as tts_address:
        assert stt_app.state.stt.transcriber is transcriber
        assert tts_app.state.tts.synthesizer is synthesizer
        async with httpx.AsyncClient() as client:
            for address in (stt_address, tts_address):
                assert (await client.get(f"http://{address}/readyz")).status_code == 200


def test_tts_unknown_provider_fails_at_start() -> None:
    settings = Settings.model_validate({"TTS_PROVIDER": "nope"})
    with pytest.raises(ValueError, match="piper"):
        create_tts_app(settings)


def test_sentence_splitting() -> None:
    assert split_sentences("Hi there! How are you? Fine.") == ["Hi there!", "How are you?",
                                                               "Fine."]
    assert split_sentences("Ask Dr. Smith. He knows.") == ["Ask Dr. Smith.", "He knows."]
    assert split_sentences("It costs 3.50 dollars") == ["It costs 3.50 dollars"]
    assert split_sentences("One\n- two\n\nthree") == ["One", "- two", "three"]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    assert split_sentences("  ") == []


def test_the_first_clause_of_a_reply_is_spoken_on_its_own() -> None:
    assert speech_pieces("Margherita is $8 small, $10 medium, and $12 large. Next one.") == [
        "Margherita is $8 small,", "$10 medium, and $12 large.", "Next one."]
    # Too short to be worth a pause: the first clause, or what would be left of the sentence.
    assert speech_pieces("Yes, a large one. Okay, fine.") == ["Yes, a large one.",
                                                              "Okay, fine."]
    assert speech_pieces("I will add that, thanks.") == ["I will add that, thanks."]
    assert speech_pieces("It costs 3,500 dollars at 10:30 today.") == [
        "It costs 3,500 dollars at 10:30 today."]
    assert speech_pieces("") == []


def test_speech_fixtures_are_deterministic() -> None:
    assert len(silence(250)) == 8000
    assert noise(100, 500, seed=3) == noise(100, 500, seed=3)
    assert noise(100, 500, seed=3) != noise(100, 500, seed=4)
    synthesize_pcm16k.cache_clear()
    once = synthesize_pcm16k("Deterministic, please.")
    synthesize_pcm16k.cache_clear()
    assert synthesize_pcm16k("Deterministic, please.") == once
    assert len(once) % 2 == 0
