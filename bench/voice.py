"""``voice``: spoken turn latency and barge-in reaction through the full system: gateway,
VAD worker, STT bridge and service, agent bridge and demo agent, TTS bridge and service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import numpy as np

from bench.common import BenchResult, step_samples
from shared.latency import Step
from tests.harness import Client, Message

NAME = "voice"
QUESTION = "What is on the menu"
LONG_REPLY = {"type": "text", "content": "count for me [stream=10]", "modality": "audio"}
ENDED, DONE, CLEAR = "agent_ended_thinking", "audio_generation_done", "clear_audio_buffer"
FRAME_BYTES = 960  # 30 ms of 16 kHz s16le
LEAD_MS, TAIL_MS = 300, 1000
SPEECH_LEVEL = 328  # |sample| above -40 dBFS counts as speech when trimming piper's edges
TURN_TIMEOUT_S = 60.0
# The per-turn latency breakdown the stages log (shared/latency.py), in pipeline order.
BREAKDOWN_LOGS = ("vad-worker", "stt-bridge", "agent-bridge", "tts-bridge")
SPECULATION_METRIC = "xrx_stt_speculations_total"
STEPS = ((Step.UTTERANCE, "utterance published (VAD)"),
         (Step.TRANSCRIPT, "transcript published"),
         (Step.AGENT_FIRST_OUTPUT, "agent's first output"),
         (Step.TTS_FIRST_AUDIO, "first audio chunk published"))

Done = Callable[[list[Message]], bool]
Pred = Callable[[Message], bool]


@dataclass(frozen=True)
class Utterance:
    """Lead silence, speech, trailing silence, and which 30 ms frames hold the speech."""

    pcm: bytes
    first_speech_frame: int
    last_speech_frame: int

    @classmethod
    def make(cls, text: str) -> Utterance:
        from tests.speech_fixtures import silence, synthesize_pcm16k

        samples = np.frombuffer(synthesize_pcm16k(text), dtype="<i2")
        loud = np.nonzero(np.abs(samples.astype(np.int32)) > SPEECH_LEVEL)[0]
        speech = samples[loud[0]:loud[-1] + 1].tobytes()
        lead = silence(LEAD_MS)
        return cls(lead + speech + silence(TAIL_MS), len(lead) // FRAME_BYTES,
                   (len(lead) + len(speech) - 1) // FRAME_BYTES)

    @property
    def speech_s(self) -> float:
        return (self.last_speech_frame - self.first_speech_frame + 1) * FRAME_BYTES / 32000


async def stream(client: Client, utt: Utterance, marks: dict[str, float]) -> None:
    """Send 30 ms frames at real-time pace; note when the first and last speech frames went."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, off in enumerate(range(0, len(utt.pcm), FRAME_BYTES)):
        await client.ws.send(utt.pcm[off:off + FRAME_BYTES])
        if i == utt.first_speech_frame:
            marks["speech_start"] = time.perf_counter()
        if i == utt.last_speech_frame:
            marks["speech_end"] = time.perf_counter()
        await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_BYTES / 32000 - loop.time()))


def _is_transcript(m: Message) -> bool:
    return isinstance(m, dict) and m.get("user") == "user"


def _is_agent_text(m: Message) -> bool:
    return (isinstance(m, dict) and m.get("user") == "agent"
            and m.get("type") in ("audio", "text"))


async def _receive(client: Client, got: list[tuple[float, Message]], done: Done,
                   timeout: float = TURN_TIMEOUT_S) -> None:
    """Append (arrival time, message) until ``done(messages)`` holds, then until 0.5 s quiet."""
    deadline = time.monotonic() + timeout
    while not done([m for _, m in got]):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"turn not finished in {timeout}s")
        msg = await client.next(left)
        got.append((time.perf_counter(), msg))
    while True:
        try:
            msg = await client.next(0.5)
        except TimeoutError:
            return
        got.append((time.perf_counter(), msg))


def _all_spoken(messages: list[Message]) -> bool:
    """The turn ended and every agent reply was spoken to the end (as the voice tests judge)."""
    signals = [m.get("content") for m in messages if isinstance(m, dict)]
    replies = sum(1 for m in messages if _is_agent_text(m))
    return ENDED in signals and signals.count(DONE) >= replies > 0


def _first(got: list[tuple[float, Message]], pred: Pred) -> float | None:
    return next((t for t, m in got if pred(m)), None)


async def spoken_turn(port: int, utt: Utterance) -> dict[str, float]:
    """One session, one spoken question; seconds from the end of speech to each event."""
    client = await Client.connect(port)
    marks: dict[str, float] = {}
    got: list[tuple[float, Message]] = []
    try:
        async with _speaking(client, utt, marks):
            await _receive(client, got, _all_spoken)
    finally:
        await client.close()
    end = marks["speech_end"]
    out: dict[str, float] = {}
    for key, pred in (("transcript", _is_transcript), ("first_text", _is_agent_text),
                      ("first_audio", lambda m: isinstance(m, bytes))):
        t = _first(got, pred)
        if t is None:
            raise RuntimeError(f"no {key} in the turn")
        out[key] = t - end
    return out


@asynccontextmanager
async def _speaking(client: Client, utt: Utterance,
                    marks: dict[str, float]) -> AsyncIterator[None]:
    """Stream ``utt`` in the background for the block's duration; stop it on the way out."""
    sender = asyncio.create_task(stream(client, utt, marks))
    try:
        yield
    finally:
        if not sender.done():
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def barge_in(port: int, utt: Utterance) -> float:
    """Seconds from the start of speech, while the agent speaks, to ``clear_audio_buffer``."""
    client = await Client.connect(port)
    marks: dict[str, float] = {}
    got: list[tuple[float, Message]] = []
    try:
        await client.send_json(LONG_REPLY)
        await client.until(lambda m: isinstance(m, bytes), timeout=30)
        async with _speaking(client, utt, marks):
            await _receive(client, got, lambda ms: any(
                isinstance(m, dict) and m.get("content") == CLEAR for m in ms), timeout=30)
            cleared = _first(got, lambda m: isinstance(m, dict) and m.get("content") == CLEAR)
            assert cleared is not None
            reaction = cleared - marks["speech_start"]
            # Let the new question's turn finish before the next measurement starts.
            after: list[tuple[float, Message]] = []
            try:
                await _receive(client, after, lambda ms: any(_is_transcript(m) for m in ms)
                               and _all_spoken(ms[[_is_transcript(m) for m in ms].index(True):]))
            except TimeoutError:
                pass
    finally:
        await client.close()
    return reaction


def run(quick: bool) -> BenchResult:
    from bench.systems import voice_system

    result = BenchResult(NAME)
    n, n_barge = (1, 1) if quick else (5, 5)
    utt = Utterance.make(QUESTION)
    t0 = time.perf_counter()
    with voice_system() as system:
        result.details["startup_s"] = round(time.perf_counter() - t0, 2)

        def breakdown() -> None:
            """The stages' own 'voice turn step' log lines of the spoken turns."""
            steps: dict[str, list[float]] = {}
            for name in BREAKDOWN_LOGS:
                for step, found in step_samples(system.procs[name].log_path).items():
                    steps.setdefault(step, []).extend(found)
            for step, label in STEPS:
                samples = steps.get(step, [])[0 if quick else 1:]  # not the warm-up turn
                result.figure(f"server_{step.value}_ms", f"server: end of voice -> {label}",
                              "ms").samples.extend(samples)
            health = system.procs["stt-bridge"].env["HEALTH_PORT"]
            metrics = httpx.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
            result.details["speculative_transcriptions"] = {
                line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith(SPECULATION_METRIC + "{")}

        asyncio.run(_measure(system.gateway_port, utt, result, n, n_barge, warm_up=not quick,
                             after_turns=breakdown))
    result.details.update({
        "question": QUESTION, "speech_s": round(utt.speech_s, 3), "lead_silence_ms": LEAD_MS,
        "trailing_silence_ms": TAIL_MS, "frame_ms": 30, "turns": n, "barge_ins": n_barge,
        "barge_in_trigger": LONG_REPLY["content"]})
    result.notes.append("Spoken turns: one fresh session each, sequential; the clock starts when "
                        "the last 30 ms frame holding speech is sent (piper's own silent edges "
                        "trimmed), before the 1 s of trailing silence, so the figures include "
                        "the VAD's end-of-utterance wait.")
    result.notes.append("Server rows: the stages' own per-turn breakdown (shared/latency.py), "
                        "from the end of the voice as the VAD dates it on its audio clock; "
                        "the client rows add the reply path to the client and the VAD's "
                        "own delay in taking the audio (the server clock starts when the VAD "
                        "has the audio, the client clock when it was sent).")
    result.notes.append("The demo agent answers every turn with the same first sentence, so "
                        "from the second turn on the TTS service serves it from its memory "
                        "cache: the first audio figure leaves out synthesis. An uncached "
                        "reply adds the TTS figure 'time to first audio chunk' (short reply) "
                        "of the same run.")
    result.notes.append("Barge-in: while the agent speaks the [stream=10] reply, the same "
                        "question is spoken; the clock starts with the first speech frame sent, "
                        "so the figure includes BARGE_IN_MIN_MS of speech (250 ms by default).")
    return result


async def _measure(port: int, utt: Utterance, result: BenchResult, n: int, n_barge: int,
                   warm_up: bool, after_turns: Callable[[], None]) -> None:
    failures = 0
    if warm_up:
        await spoken_turn(port, utt)
    for _ in range(n):
        try:
            times = await spoken_turn(port, utt)
        except (TimeoutError, RuntimeError, KeyError):
            failures += 1
            continue
        result.figure("transcript_ms", "end of speech -> user transcript", "ms").samples.append(
            1000 * times["transcript"])
        result.figure("first_text_ms", "end of speech -> first agent text",
                      "ms").samples.append(1000 * times["first_text"])
        result.figure("first_audio_ms", "end of speech -> first audio frame",
                      "ms").samples.append(1000 * times["first_audio"])
    after_turns()
    for _ in range(n_barge):
        try:
            reaction = await barge_in(port, utt)
        except (TimeoutError, KeyError):
            failures += 1
            continue
        result.figure("barge_in_ms", "barge-in: start of speech -> clear_audio_buffer",
                      "ms").samples.append(1000 * reaction)
    result.details["failed_measurements"] = failures
