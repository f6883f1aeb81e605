"""The STT stage's per-session logic: utterances in order -> transcripts -> agent turns."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared import topology
from shared.messages import STT_DOWN_REPLY, SpeechKind, UtteranceIn, error_reply
from shared.ownership import Acker
from shared.stage_session import QueuedSession
from shared.ws_pool import ServiceUnavailable
from stt_bridge.speculation import Speculation
from stt_bridge.streaming import StreamingStt
from stt_bridge.stt_client import SttClient
from stt_bridge.transcripts import publish_transcript

log = structlog.get_logger(__name__)

# How long a transcript is held at most while the user talks on (a VAD replica that died
# mid-utterance must not hold the words forever).
HOLD_LIMIT_S = 20.0
# Utterances this close (audio ms, end of one to start of the next, pre-roll included) are one
# message when the second is already queued: a pause mid-sentence, not two turns.
JOIN_GAP_MS = 1000

TRANSCRIPTS = Counter("xrx_stt_transcripts_total", "Utterances transcribed", ["outcome"])
STT_SECONDS = Histogram("xrx_stt_seconds", "Time to transcribe one utterance")


class SttSession(QueuedSession[UtteranceIn]):
    entry_type = UtteranceIn

    def __init__(self, r: Redis, stt: SttClient, sid: str, acker: Acker,
                 agent_wait_ms: int) -> None:
        super().__init__(sid, acker)
        self.r, self.stt = r, stt
        self.agent_wait_ms = agent_wait_ms
        self._held: list[str] = []  # transcripts waiting for the user to stop talking
        self._held_voice_end_ms = 0  # when the voice of the last of them stopped
        self._held_voice_start_ms = 0  # when the voice of the first of them began
        # What the VAD said last about the user's voice, in stream order.
        self._speaking = False
        self._speaking_since_ms = 0  # when the voice the VAD reports as going on began
        self._voice_end_ms = 0
        self._voice_changed = asyncio.Event()
        self._stream: StreamingStt | None = None
        # Where each queued utterance starts (session audio ms), in queue order.
        self._queued_starts: deque[int] = deque()
        self._speculation = Speculation(stt)

    def is_close(self, entry: UtteranceIn) -> bool:
        return entry.kind == SpeechKind.CLOSE

    async def act_now(self, entry_id: bytes, entry: UtteranceIn) -> bool:
        match entry.kind:
            case SpeechKind.STREAM:
                await self._streaming().send(entry.pcm)
            case SpeechKind.SPEAKING | SpeechKind.QUIET:
                self._speaking = entry.kind == SpeechKind.SPEAKING
                self._speaking_since_ms = entry.voice_start_ms
                self._voice_end_ms = entry.voice_end_ms or self._voice_end_ms
                self._voice_changed.set()
            case SpeechKind.TENTATIVE:
                self._speculation.start(entry)
            case SpeechKind.UTTERANCE:
                self._queued_starts.append(entry.start_ms)
                self._speaking = False
                self._voice_end_ms = entry.voice_end_ms or self._voice_end_ms
                self._voice_changed.set()
                return False  # queued: transcribed in order
        self.acker.ack(entry_id)
        return True

    async def stopped(self) -> None:
        self._speculation.close()
        if self._stream is not None:
            await self._stream.aclose()

    def _streaming(self) -> StreamingStt:
        if self._stream is None:
            self._stream = StreamingStt(self.stt.pool, self._streamed_text, self._stt_down)
        return self._stream

    async def _streamed_text(self, text: str) -> None:
        TRANSCRIPTS.labels("ok").inc()
        await publish_transcript(self.r, self.sid, text)

    async def _stt_down(self, error: str) -> None:
        TRANSCRIPTS.labels("stt_down").inc()
        log.warning("speech recognition unavailable", session_id=self.sid, error=error)
        await topology.reply(self.r, error_reply(self.sid, STT_DOWN_REPLY))

    async def process(self, utt: UtteranceIn) -> None:
        if self._queued_starts:
            self._queued_starts.popleft()
        text = await self._speculation.take(utt)
        try:
            if text is None:
                with STT_SECONDS.time():
                    text = await self.stt.transcribe(utt.pcm)
        except ServiceUnavailable as err:
            await self._stt_down(str(err))
            return
        if text:
            TRANSCRIPTS.labels("ok").inc()
            if not self._held:
                self._held_voice_start_ms = utt.voice_start_ms
            self._held.append(text)
            self._held_voice_end_ms = utt.voice_end_ms
        else:
            TRANSCRIPTS.labels("empty").inc()
            log.info("empty transcript dropped", start_ms=utt.start_ms, end_ms=utt.end_ms)
        await self._release_when_quiet(utt)

    async def _release_when_quiet(self, utt: UtteranceIn) -> None:
        """AGENT_WAIT_MS as in the original: a transcript becomes a user message only once
        the user has been quiet for AGENT_WAIT_MS; while they go on talking it waits, and
        joins the transcript of what they say next, as one message. The VAD's speaking and
        quiet entries arrive in the session's stream: waiting is event-driven, not polled.

        An utterance already queued joins only if it began within JOIN_GAP_MS of this one's
        end on the session's audio clock: utterances queued behind a failover or a slow STT
        are separate turns, as they were said, not one merged message. Likewise the user's
        talking on holds the words only if that voice began within JOIN_GAP_MS of their end
        (wall clock, as said): after a failover the transcript is late, and by then the user
        may well be saying the next thing after a pause that made this one a turn of its
        own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_LIMIT_S
        while self._held and loop.time() < deadline:
            if self.queue.pending():
                if self._queued_starts and self._queued_starts[0] - utt.end_ms < JOIN_GAP_MS:
                    # The next utterance is on its way and takes these words along; until
                    # they are out, they are only in memory here.
                    self.hold_ack()
                    return
                break
            if self._speaking:
                if self._spoke_again_after_pause():
                    break
                wait_s = deadline - loop.time()
            else:
                wait_s = (self._voice_end_ms + self.agent_wait_ms) / 1000 - time.time()
                if wait_s <= 0:
                    break
            self._voice_changed.clear()
            try:
                await asyncio.wait_for(self._voice_changed.wait(), timeout=max(wait_s, 0))
            except TimeoutError:
                pass
        if self._held:
            text, self._held = " ".join(self._held), []
            await publish_transcript(self.r, self.sid, text, utterance_start_ms=utt.start_ms,
                                     voice_end_ms=self._held_voice_end_ms,
                                     voice_start_ms=self._held_voice_start_ms)
            self.release_acks()

    def _spoke_again_after_pause(self) -> bool:
        """The voice going on now began JOIN_GAP_MS or more after the held words ended: not
        a pause mid-sentence, so they are a turn of their own (the queued-utterance rule,
        applied to an utterance still being said)."""
        return bool(self._speaking_since_ms and self._held_voice_end_ms
                    and self._speaking_since_ms - self._held_voice_end_ms >= JOIN_GAP_MS)
