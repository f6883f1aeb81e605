"""The TTS stage's per-session logic: speak replies in order, release each message as its
speech starts, and stop at once when the turn is cancelled."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared import keys
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
from shared.ownership import Acker, Fields
from shared.redis_io import (
    clear_record,
    fence_of,
    is_fenced,
    publish_reply,
    update_record,
)
from shared.ws_pool import ServiceUnavailable
from tts_bridge.tts_client import TtsClient

log = structlog.get_logger(__name__)

SPOKEN = Counter("xrx_tts_replies_total", "Replies handled by the TTS stage", ["outcome"])
FIRST_AUDIO = Histogram("xrx_tts_first_audio_seconds", "Speak request to first audio chunk")


class TtsSession:
    def __init__(self, r: Redis, tts: TtsClient, sid: str, acker: Acker,
                 sample_rate: int) -> None:
        self.r, self.tts, self.sid, self.acker = r, tts, sid, acker
        self.sample_rate = sample_rate
        self._playback_until_ms = 0.0
        self._queue: asyncio.Queue[tuple[bytes, SpeakIn]] = asyncio.Queue()
        self._current: asyncio.Task[None] | None = None
        self._runner = asyncio.create_task(self._run())

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = SpeakIn.decode(fields)
        if entry.kind == SpeakKind.CLOSE:
            await self._stop()
            await self.acker.ack(entry_id, *(i for i, _ in self._drain()))
            return True
        if entry.kind == SpeakKind.CANCEL:
            # Drop what this cancel covers, queued or being spoken, without waiting.
            dropped = [i for i, e in self._drain(up_to_turn=entry.turn)]
            if self._current is not None and not self._current.done():
                self._current.cancel()
            await self.acker.ack(entry_id, *dropped)
            return False
        self._queue.put_nowait((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for task in (self._current, self._runner):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    def _drain(self, up_to_turn: int = 0) -> list[tuple[bytes, SpeakIn]]:
        """Remove queued entries of turns <= ``up_to_turn`` (all when 0); return them."""
        kept: list[tuple[bytes, SpeakIn]] = []
        dropped: list[tuple[bytes, SpeakIn]] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            (dropped if not up_to_turn or item[1].turn <= up_to_turn else kept).append(item)
        for item in kept:
            self._queue.put_nowait(item)
        return dropped

    async def _run(self) -> None:
        with structlog.contextvars.bound_contextvars(session_id=self.sid):
            while True:
                entry_id, entry = await self._queue.get()
                self._current = asyncio.create_task(self._speak(entry))
                try:
                    await self._current
                except asyncio.CancelledError:
                    if self._runner.cancelling():
                        raise
                    SPOKEN.labels("cancelled").inc()
                finally:
                    self._current = None
                    await clear_record(self.r, self.sid, keys.RECORD_TTS_BUSY)
                await self.acker.ack(entry_id)

    async def _extend_playback(self, nbytes: int) -> None:
        """Track when the client will have played what it was sent (TTS runs faster than
        real time), so barge-in knows the agent is still audibly speaking."""
        now_ms = time.time() * 1000
        self._playback_until_ms = max(self._playback_until_ms, now_ms) + (
            nbytes / 2 / self.sample_rate * 1000)
        await update_record(self.r, self.sid,
                            **{keys.RECORD_PLAYBACK_UNTIL: int(self._playback_until_ms)})

    async def _fenced(self, turn: int) -> bool:
        return is_fenced(turn, await fence_of(self.r, self.sid))

    async def _speak(self, entry: SpeakIn) -> None:
        if await self._fenced(entry.turn):
            SPOKEN.labels("fenced").inc()
            return
        # The message is shown as its speech starts; later ones wait behind it.
        await publish_reply(self.r, self.sid, Reply(turn=entry.turn, user=entry.user,
                                                    type=entry.type, content=entry.content))
        if not entry.text.strip():
            SPOKEN.labels("not_spoken").inc()
            return
        await update_record(self.r, self.sid, **{keys.RECORD_TTS_BUSY: entry.turn})
        loop = asyncio.get_running_loop()
        started, first = loop.time(), True
        try:
            async with aclosing(self.tts.synthesize(entry.text)) as chunks:
                async for chunk in chunks:
                    # Fence before every chunk: a barge-in handled by another replica must
                    # silence this one within a chunk.
                    if await self._fenced(entry.turn):
                        SPOKEN.labels("fenced").inc()
                        return
                    if first:
                        FIRST_AUDIO.observe(loop.time() - started)
                        first = False
                    await publish_reply(self.r, self.sid, Reply(turn=entry.turn, pcm=chunk))
                    await self._extend_playback(len(chunk))
        except ServiceUnavailable as err:
            SPOKEN.labels("tts_down").inc()
            log.warning("speech synthesis unavailable", error=str(err))
            await publish_reply(self.r, self.sid, error_reply(TTS_DOWN_REPLY))
            return
        SPOKEN.labels("spoken").inc()
        await publish_reply(self.r, self.sid,
                            signal(entry.turn, Signal.AUDIO_GENERATION_DONE, User.SYSTEM))
