"""The STT stage's per-session logic: utterances in order -> transcripts -> agent turns."""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared.messages import STT_DOWN_REPLY, UtteranceIn, error_reply
from shared.ownership import Acker
from shared.redis_io import Fields, publish_reply
from shared.serial import SerialRunner
from shared.ws_pool import ServiceUnavailable
from stt_bridge.streaming import StreamingStt
from stt_bridge.stt_client import SttClient
from stt_bridge.transcripts import publish_transcript

log = structlog.get_logger(__name__)

TRANSCRIPTS = Counter("xrx_stt_transcripts_total", "Utterances transcribed", ["outcome"])
STT_SECONDS = Histogram("xrx_stt_seconds", "Time to transcribe one utterance")


Item = tuple[bytes, UtteranceIn]


class SttSession:
    def __init__(self, r: Redis, stt: SttClient, sid: str, acker: Acker) -> None:
        self.r, self.stt, self.sid, self.acker = r, stt, sid, acker
        self._handing_over = False
        self._stream: StreamingStt | None = None
        self._utterances: SerialRunner[Item] = SerialRunner(self._transcribe, self._finished)

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = UtteranceIn.decode(fields)
        if entry.close:
            await self._stop()
            await self.acker.ack(entry_id, *(i for i, _ in self._utterances.take()))
            return True
        if entry.streaming:
            await self._streaming().send(entry.pcm)
            await self.acker.ack(entry_id)
            return False
        self._utterances.put((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        self._handing_over = handing_over
        await self._stop()

    async def _stop(self) -> None:
        await self._utterances.stop()
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
        await publish_reply(self.r, self.sid, error_reply(STT_DOWN_REPLY))

    async def _finished(self, item: Item, cancelled: bool) -> None:
        if not (cancelled and self._handing_over):
            await self.acker.ack(item[0])

    async def _transcribe(self, item: Item) -> None:
        with structlog.contextvars.bound_contextvars(session_id=self.sid):
            await self._transcribe_one(item[1])

    async def _transcribe_one(self, utt: UtteranceIn) -> None:
        try:
            with STT_SECONDS.time():
                text = await self.stt.transcribe(utt.pcm)
        except ServiceUnavailable as err:
            await self._stt_down(str(err))
            return
        if not text:
            TRANSCRIPTS.labels("empty").inc()
            log.info("empty transcript dropped", start_ms=utt.start_ms, end_ms=utt.end_ms)
            return
        TRANSCRIPTS.labels("ok").inc()
        await publish_transcript(self.r, self.sid, text)
