"""Every cloud adapter against a local fake of its provider's wire protocol: the right text or
audio, cancel mid-stream, a dropped connection, a rejected key (401) and a quota (429)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from services.cloud import ProviderError
from services.stt.deepgram_provider import DeepgramTranscriber
from services.stt.openai_provider import OpenAiTranscriber
from services.tts.cartesia_provider import CartesiaSynthesizer
from services.tts.deepgram_provider import DeepgramSynthesizer
from services.tts.elevenlabs_provider import ElevenLabsSynthesizer
from services.tts.openai_provider import OpenAiSynthesizer
from services.tts.protocols import Synthesizer
from tests.fakes import API_KEY, FakeProvider, serve, tone
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.deepgram import WORDS, FakeDeepgram
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.openai import TRANSCRIPT, FakeOpenAi

RATE = 16_000
TIMEOUT_S = 5.0
TEXT = "Hello there. Your large pepperoni is on its way."

# --- TTS --------------------------------------------------------------------------------------


@dataclass
class TtsCase:
    name: str
    fake: Callable[[], FakeProvider]
    build: Callable[[str, str], Synthesizer]  # (base URL, key) -> synthesizer at RATE


TTS_CASES = [
    TtsCase("elevenlabs", FakeElevenLabs, lambda url, key: ElevenLabsSynthesizer(
        api_key=key, base_url=url, voice_id="voice-1", model_id="eleven_flash_v2_5",
        sample_rate=RATE, timeout_s=TIMEOUT_S)),
    TtsCase("openai", FakeOpenAi, lambda url, key: OpenAiSynthesizer(
        api_key=key, base_url=url + "/v1", model="gpt-4o-mini-tts", voice="alloy",
        sample_rate=RATE, timeout_s=TIMEOUT_S)),
    TtsCase("deepgram", FakeDeepgram, lambda url, key: DeepgramSynthesizer(
        api_key=key, base_url=url, model="aura-2-thalia-en", sample_rate=RATE,
        timeout_s=TIMEOUT_S)),
    TtsCase("cartesia", FakeCartesia, lambda url, key: CartesiaSynthesizer(
        api_key=key, base_url=url, version="2025-04-16", model_id="sonic-2",
        voice_id="voice-1", sample_rate=RATE, timeout_s=TIMEOUT_S)),
]


@pytest.fixture(params=TTS_CASES, ids=lambda c: c.name)
async def tts(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeProvider, TtsCase, str]]:
    case: TtsCase = request.param
    fake = case.fake()
    async with serve(fake.app()) as url:
        yield fake, case, url


async def collect(synthesizer: Synthesizer, text: str = TEXT) -> list[bytes]:
    return [block async for block in synthesizer.synthesize(text)]


async def test_tts_yields_the_providers_audio_at_the_service_rate(
        tts: tuple[FakeProvider, TtsCase, str]) -> None:
    fake, case, url = tts
    blocks = await collect(case.build(url, API_KEY))
    pcm = b"".join(blocks)
    # One second of the fake's tone at whatever rate it was asked for, whole samples at 16 kHz
    # (resampled from 24 kHz for OpenAI), split into several blocks as it streamed.
    assert all(len(b) % 2 == 0 for b in blocks)
    assert abs(len(pcm) // 2 - RATE) <= 16, len(pcm)
    assert len(blocks) >= 5
    assert fake.completed == 1
    assert len(fake.requests) == 1
    request = fake.requests[0]
    if case.name == "elevenlabs":
        assert request["voice_id"] == "voice-1"
        assert request["query"] == {"model_id": "eleven_flash_v2_5", "output_format": "pcm_16000"}
        assert "".join(request["texts"]).strip() == TEXT
    elif case.name == "openai":
        assert request["body"] == {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy",
                                   "response_format": "pcm"}
    elif case.name == "deepgram":
        assert request["query"]["sample_rate"] == "16000"
        assert request["auth"] == f"Token {API_KEY}" and request["body"] == {"text": TEXT}
    else:
        assert request["transcript"] == TEXT and request["model_id"] == "sonic-2"
        assert request["output_format"] == {"container": "raw", "encoding": "pcm_s16le",
                                            "sample_rate": RATE}


async def test_tts_cancel_mid_stream_stops_the_provider(
        tts: tuple[FakeProvider, TtsCase, str]) -> None:
    fake, case, url = tts
    fake.chunk_pause_s = 0.2
    stream = case.build(url, API_KEY).synthesize(TEXT)
    first = await anext(stream)
    assert first
    await stream.aclose()  # what the TTS session does when the turn is cancelled
    await fake.wait_for("aborted", 1)
    assert fake.completed == 0


async def test_tts_dropped_connection_mid_stream_is_an_error_not_a_retry(
        tts: tuple[FakeProvider, TtsCase, str]) -> None:
    fake, case, url = tts
    fake.drop_after_chunks = 3
    got: list[bytes] = []
    with pytest.raises(ProviderError) as err:
        async for block in case.build(url, API_KEY).synthesize(TEXT):
            got.append(block)
    assert got, "audio before the drop is delivered"
    assert err.value.provider == case.name
    assert len(fake.requests) <= 1  # words already spoken are never spoken twice


async def test_tts_outage_before_any_audio_is_retried(
        tts: tuple[FakeProvider, TtsCase, str]) -> None:
    fake, case, url = tts
    fake.fail_once_status = 503
    pcm = b"".join(await collect(case.build(url, API_KEY)))
    assert abs(len(pcm) // 2 - RATE) <= 16
    assert fake.completed == 1


@pytest.mark.parametrize(("status", "words"), [(401, "API key"), (429, "quota")])
async def test_tts_bad_key_and_quota_fail_at_once_with_a_clear_reason(
        tts: tuple[FakeProvider, TtsCase, str], status: int, words: str) -> None:
    fake, case, url = tts
    key = API_KEY
    if status == 401:
        key = "wrong-key"
    else:
        fake.fail_status = 429
    with pytest.raises(ProviderError) as err:
        await collect(case.build(url, key))
    assert err.value.status == status and not err.value.retryable
    assert words in str(err.value) and case.name in str(err.value)
    assert fake.completed == 0


# --- STT: OpenAI-compatible (openai, groq) ------------------------------------------------------


@pytest.fixture(params=["openai", "groq"])
async def whisper_api(request: pytest.FixtureRequest
                      ) -> AsyncIterator[tuple[FakeOpenAi, Callable[[str], OpenAiTranscriber]]]:
    fake = FakeOpenAi()
    prefix = "/v1" if request.param == "openai" else "/openai/v1"
    async with serve(fake.app()) as url:
        def build(key: str) -> OpenAiTranscriber:
            return OpenAiTranscriber(provider=request.param, base_url=url + prefix,
                                     api_key=key, model="whisper-large-v3-turbo",
                                     timeout_s=TIMEOUT_S)
        yield fake, build


UTTERANCE = tone(RATE, 1.5)


async def test_stt_upload_returns_the_transcript(
        whisper_api: tuple[FakeOpenAi, Callable[[str], OpenAiTranscriber]]) -> None:
    fake, build = whisper_api
    assert await build(API_KEY).transcribe(UTTERANCE) == TRANSCRIPT
    [request] = fake.requests
    assert request["fields"] == ["file", "model", "response_format"]
    assert request["model"] == "whisper-large-v3-turbo" and request["response_format"] == "json"
    assert request["seconds"] == 1.5


async def test_stt_upload_outage_is_retried_and_bad_key_or_quota_is_not(
        whisper_api: tuple[FakeOpenAi, Callable[[str], OpenAiTranscriber]]) -> None:
    fake, build = whisper_api
    fake.fail_once_status = 503
    assert await build(API_KEY).transcribe(UTTERANCE) == TRANSCRIPT
    assert len(fake.requests) == 2
    with pytest.raises(ProviderError) as err:
        await build("wrong-key").transcribe(UTTERANCE)
    assert err.value.status == 401 and "API key" in str(err.value)
    fake.fail_status = 429
    with pytest.raises(ProviderError) as err:
        await build(API_KEY).transcribe(UTTERANCE)
    assert err.value.status == 429 and "quota" in str(err.value)
    assert len(fake.requests) == 4  # neither was retried


async def test_stt_upload_cancel_and_dropped_connection(
        whisper_api: tuple[FakeOpenAi, Callable[[str], OpenAiTranscriber]]) -> None:
    fake, build = whisper_api
    fake.transcribe_delay_s = 2.0
    task = asyncio.create_task(build(API_KEY).transcribe(UTTERANCE))
    await asyncio.sleep(0.5)  # the upload is in and the fake is "decoding"
    assert fake.requests
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await fake.wait_for("aborted", 1)
    # Nothing listening any more: three attempts, then a clear failure.
    with pytest.raises(ProviderError) as err:
        await OpenAiTranscriber(provider="groq", base_url="http://127.0.0.1:9/v1",
                                api_key=API_KEY, model="m", timeout_s=1).transcribe(UTTERANCE)
    assert "unreachable" in str(err.value) and err.value.retryable


# --- STT: Deepgram live streaming ---------------------------------------------------------------


@pytest.fixture
async def deepgram() -> AsyncIterator[tuple[FakeDeepgram, str]]:
    fake = FakeDeepgram()
    async with serve(fake.app()) as url:
        yield fake, url


def listen(url: str, key: str = API_KEY) -> DeepgramTranscriber:
    return DeepgramTranscriber(api_key=key, base_url=url, model="nova-3", endpointing_ms=300,
                               timeout_s=TIMEOUT_S)


async def frames(seconds: float, then_wait: float = 0.0) -> AsyncIterator[bytes]:
    pcm = tone(RATE, seconds)
    for i in range(0, len(pcm), 960):  # 30 ms frames
        yield pcm[i:i + 960]
        await asyncio.sleep(0)
    await asyncio.sleep(then_wait)


async def test_deepgram_streams_audio_and_yields_each_endpointed_utterance(
        deepgram: tuple[FakeDeepgram, str]) -> None:
    fake, url = deepgram
    # 2 s recognised as one utterance, then 1.2 s more whose words come on CloseStream.
    texts = [t async for t in listen(url).stream(frames(3.2))]
    assert texts == [" ".join(WORDS), WORDS[0]]
    assert fake.audio_bytes == len(tone(RATE, 3.2))
    assert fake.close_streams == 1 and fake.completed == 1
    [query] = fake.queries
    assert query["model"] == "nova-3" and query["encoding"] == "linear16"
    assert query["sample_rate"] == "16000" and query["interim_results"] == "true"
    assert query["endpointing"] == "300"


async def test_deepgram_cancel_closes_the_provider_stream(
        deepgram: tuple[FakeDeepgram, str]) -> None:
    fake, url = deepgram
    stream = listen(url).stream(frames(60.0))
    assert await anext(stream) == " ".join(WORDS)
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    await fake.wait_for("aborted", 1)
    assert fake.close_streams == 0


async def test_deepgram_dropped_connection_bad_key_and_quota_are_provider_errors(
        deepgram: tuple[FakeDeepgram, str]) -> None:
    fake, url = deepgram
    fake.drop_after_chunks = 10
    with pytest.raises(ProviderError) as err:
        [t async for t in listen(url).stream(frames(5.0))]
    assert "dropped" in str(err.value) and err.value.retryable
    fake.drop_after_chunks = None
    with pytest.raises(ProviderError) as err:
        [t async for t in listen(url, "wrong").stream(frames(1.0))]
    assert err.value.status == 401 and "API key" in str(err.value)
    fake.fail_status = 429
    with pytest.raises(ProviderError) as err:
        [t async for t in listen(url).stream(frames(1.0))]
    assert err.value.status == 429 and "quota" in str(err.value)
