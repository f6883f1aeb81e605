"""The TTS stage's per-session logic: speak replies in order, release each message as its
speech starts, and stop at once when the turn is cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared import latency
from shared.barge_in import interrupt
from shared.latency import Step
from shared.messages import (
    TTS_DOWN_REPLY,
    Reply,
    Signal,
    SpeakIn,
    SpeakKind,
    User,
    error_reply,
    signal,
)
from shared.ownership import Acker
from shared.redis_io import id_key
from shared.stage_session import QueuedSession
from shared.turns import is_fenced
from shared.ws_pool import ServiceUnavailable
from tts_bridge.publisher import ChunkPublisher, publish
from tts_bridge.tts_client import TtsClient

log = structlog.get_logger(__name__)

SPOKEN = Counter("xrx_tts_replies_total", "Replies handled by the TTS stage", ["outcome"])
FIRST_AUDIO = Histogram("xrx_tts_first_audio_seconds", "Speak request to first audio chunk")


class TtsSession(QueuedSession[SpeakIn]):
    entry_type = SpeakIn

    def __init__(self, r: Redis, tts: TtsClient, sid: str, acker: Acker,
                 sample_rate: int) -> None:
        super().__init__(sid, acker)
        self.r, self.tts = r, tts
        self.sample_rate = sample_rate
        # Until when (wall clock, ms) the client is still playing what it was sent: as long as
        # it is, the agent is audibly speaking and the user's voice barges in.
        self._playback_until_ms = 0.0
        self._speaking = 0  # the turn of the reply being handled, 0 when none
        self._speaking_since_ms = 0.0  # when (wall clock) it began
        self._last_voice_ms = 0  # when the latest voice the VAD told of began

    def is_close(self, entry: SpeakIn) -> bool:
        return entry.kind == SpeakKind.CLOSE

    async def act_now(self, entry_id: bytes, entry: SpeakIn) -> bool:
        if entry.kind == SpeakKind.CANCEL:
            # Drop what this cancel covers, queued or being spoken, without waiting.
            self._drop(lambda turn: not entry.turn or turn <= entry.turn, current=True)
        elif entry.kind == SpeakKind.VOICE:
            await self._voice(entry, told_ms=id_key(entry_id)[0])
        else:
            if entry.turn_started_ms and self._last_voice_ms > entry.turn_started_ms:
                # The VAD told of a voice before this reply reached the stream, and the voice
                # began after the reply's turn started: the agent was still thinking when the
                # VAD told, but may have finished before hearing of it. Decided here; the
                # reply is then dropped as fenced.
                await interrupt(self.r, self.sid, self._last_voice_ms)
            return False
        self.acker.ack(entry_id)
        return True

    async def _voice(self, entry: SpeakIn, told_ms: int) -> None:
        """The user is talking (shared/barge_in.py): was this stage speaking, or the client
        still playing, when the VAD told (``told_ms``, when its entry was written)? Then the
        turn stops, and what is queued behind it. A reply that was only waiting (its replica
        died and this one took it over late) is not cut: the user heard nothing of it."""
        self._last_voice_ms = max(self._last_voice_ms, entry.voice_start_ms)
        if not ((self._speaking and self._speaking_since_ms <= told_ms)
                or self._playback_until_ms > told_ms):
            return
        kill = await interrupt(self.r, self.sid, entry.voice_start_ms)
        if kill is not None:
            self._drop(lambda turn: is_fenced(turn, kill.fence),
                       current=is_fenced(self._speaking, kill.fence))

    def _drop(self, covers: Callable[[int], bool], *, current: bool) -> None:
        """Acknowledge the queued replies of the turns ``covers`` says, unspoken, and cut the
        one being spoken when ``current``. The client has been told to drop what it had
        queued (by whoever raised the fence), so nothing is playing any more."""
        dropped = self.queue.take(lambda item: covers(item[1].turn))
        self.acker.ack(*(i for i, _ in dropped))
        if current:
            self.queue.cancel_current()
        self._playback_until_ms = 0.0

    async def after(self, entry: SpeakIn, cancelled: bool) -> None:
        self._speaking = 0
        if cancelled:
            SPOKEN.labels("cancelled").inc()

    async def process(self, entry: SpeakIn) -> None:
        self._speaking, self._speaking_since_ms = entry.turn, time.time() * 1000
        await self._speak(entry)

    def _played(self, nbytes: int) -> None:
        """Track when the client will have played what it was sent (TTS runs faster than
        real time), so barge-in knows the agent is still audibly speaking."""
        now_ms = time.time() * 1000
        self._playback_until_ms = max(self._playback_until_ms, now_ms) + (
            nbytes / 2 / self.sample_rate * 1000)

    async def _speak(self, entry: SpeakIn) -> None:
        # The message is shown as its speech starts; later ones wait behind it.
        if not await publish(self.r, self.sid, entry.turn, [Reply(
                session_id=self.sid, turn=entry.turn, user=entry.user, type=entry.type,
                content=entry.content, seq=entry.seq)]):
            SPOKEN.labels("fenced").inc()
            return
        if not entry.text.strip():
            SPOKEN.labels("not_spoken").inc()
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = ChunkPublisher(self.r, self.sid, entry.turn, lambda: latency.observe(
            Step.TTS_FIRST_AUDIO, entry.voice_end_ms, session_id=self.sid, turn=entry.turn))
        sent = 0
        try:
            async with aclosing(self.tts.synthesize(entry.text)) as chunks:
                async for chunk in chunks:
                    if not sent:
                        FIRST_AUDIO.observe(loop.time() - started)
                    self._played(len(chunk))
                    sent += 1
                    # The fence comes back with every round trip: a barge-in handled by
                    # another replica silences this one within a round trip.
                    if not out.add(Reply(session_id=self.sid, turn=entry.turn, pcm=chunk,
                                         seq=entry.seq, chunk=sent)):
                        SPOKEN.labels("fenced").inc()
                        return
        except ServiceUnavailable as err:
            SPOKEN.labels("tts_down").inc()
            log.warning("speech synthesis unavailable", error=str(err))
            await out.flush(error_reply(self.sid, TTS_DOWN_REPLY))
            return
        except BaseException:
            out.detach()  # cancelled (barge-in, hand-over) or failed: it is not waited for
            raise
        if not await out.flush(signal(self.sid, entry.turn, Signal.AUDIO_GENERATION_DONE,
                                      User.SYSTEM)):
            SPOKEN.labels("fenced").inc()
            return
        SPOKEN.labels("spoken").inc()
