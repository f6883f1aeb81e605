"""The STT stage's per-session logic: utterances in order -> transcripts -> agent turns."""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import (
    STT_DOWN_REPLY,
    AgentInput,
    InputKind,
    Modality,
    MsgType,
    Reply,
    User,
    UtteranceIn,
    error_reply,
)
from shared.ownership import Acker
from shared.redis_io import Fields, begin_turn, publish_reply
from shared.serial import SerialRunner
from shared.ws_pool import ServiceUnavailable
from stt_bridge.stt_client import SttClient

log = structlog.get_logger(__name__)

TRANSCRIPTS = Counter("xrx_stt_transcripts_total", "Utterances transcribed", ["outcome"])
STT_SECONDS = Histogram("xrx_stt_seconds", "Time to transcribe one utterance")


Item = tuple[bytes, UtteranceIn]


class SttSession:
    def __init__(self, r: Redis, stt: SttClient, sid: str, acker: Acker) -> None:
        self.r, self.stt, self.sid, self.acker = r, stt, sid, acker
        self._handing_over = False
        self._utterances: SerialRunner[Item] = SerialRunner(self._transcribe, self._finished)

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = UtteranceIn.decode(fields)
        if entry.close:
            await self._utterances.stop()
            await self.acker.ack(entry_id, *(i for i, _ in self._utterances.take()))
            return True
        self._utterances.put((entry_id, entry))
        return False

    async def close(self, *, handing_over: bool) -> None:
        self._handing_over = handing_over
        await self._utterances.stop()

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
            TRANSCRIPTS.labels("stt_down").inc()
            log.warning("speech recognition unavailable", error=str(err))
            await publish_reply(self.r, self.sid, error_reply(STT_DOWN_REPLY))
            return
        if not text:
            TRANSCRIPTS.labels("empty").inc()
            log.info("empty transcript dropped", start_ms=utt.start_ms, end_ms=utt.end_ms)
            return
        TRANSCRIPTS.labels("ok").inc()
        turn = await begin_turn(self.r, self.sid)
        log.info("transcript", turn=turn, text=text)
        await publish_reply(self.r, self.sid, Reply(turn=turn, user=User.USER, type=MsgType.AUDIO,
                                                    content=text))
        await self.r.xadd(keys.stage_input(self.sid, Stage.AGENT_BRIDGE),
                          AgentInput(kind=InputKind.TRANSCRIPT, turn=turn, content=text,
                                     modality=Modality.AUDIO).encode())
