"""The VAD stage's per-session logic: queue audio for the batcher, publish what it finds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import structlog
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import AudioIn, UtteranceIn
from shared.ownership import Acker
from shared.redis_io import Fields, count_in_record, update_record
from vad_worker.barge_in import barge_in
from vad_worker.events import SpeechStarted, Utterance, VadEvent
from vad_worker.state import SessionVadState

if TYPE_CHECKING:
    from vad_worker.batcher import VadBatcher

log = structlog.get_logger(__name__)

# Audio between checkpoints: what a replica taking over the session processes again.
CHECKPOINT_EVERY_SAMPLES = 16000
CHECKPOINT_TTL_S = 3600


class VadSession:
    """Per-session audio queue in front of the shared batcher.

    Inputs are acknowledged only once a checkpoint covers them, so a replica that takes the
    session over restores the checkpoint and re-reads exactly the audio after it.
    """

    def __init__(self, r: Redis, sid: str, acker: Acker, state: SessionVadState,
                 batcher: VadBatcher, *, forward_audio: bool = False) -> None:
        self.silence_ms = batcher.engine.params.silence_ms
        self.r, self.sid, self.acker, self.state, self.batcher = r, sid, acker, state, batcher
        # Streaming STT: audio goes on as it comes; the VAD only detects barge-in.
        self.forward_audio = forward_audio
        self.pending: list[tuple[bytes, bytes]] = []  # (entry id, pcm) not yet processed
        self.uncheckpointed: list[bytes] = []
        self._checkpointed_pos = state.pos
        self.closed = False
        self._speaking = state.triggered

    @classmethod
    async def restore(cls, r: Redis, sid: str, acker: Acker, batcher: VadBatcher, *,
                      forward_audio: bool = False) -> VadSession:
        raw = cast(bytes | None, await r.get(keys.checkpoint(sid, Stage.VAD)))
        state = SessionVadState.from_bytes(raw) if raw else SessionVadState(session_id=sid)
        if raw:
            log.info("vad state restored from checkpoint", session_id=sid, pos=state.pos)
        return cls(r, sid, acker, state, batcher, forward_audio=forward_audio)

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = AudioIn.decode(fields)
        if entry.close:
            self.closed = True
            ids = [i for i, _ in self.pending] + self.uncheckpointed + [entry_id]
            self.pending.clear()
            self.uncheckpointed.clear()
            await self.acker.ack(*ids)
            await self.r.delete(keys.checkpoint(self.sid, Stage.VAD))
            return True
        if self.forward_audio:
            await self.r.xadd(keys.stage_input(self.sid, Stage.STT_BRIDGE),
                              UtteranceIn(pcm=entry.pcm, streaming=True).encode())
        self.pending.append((entry_id, entry.pcm))
        self.batcher.submit(self)
        return False

    async def close(self, *, handing_over: bool) -> None:
        self.closed = True

    def take_pending(self) -> tuple[list[bytes], bytes]:
        ids = [i for i, _ in self.pending]
        pcm = b"".join(p for _, p in self.pending)
        self.pending.clear()
        return ids, pcm

    async def publish(self, events: list[VadEvent], processed_ids: list[bytes]) -> None:
        if self.closed:
            return
        # Before the utterance goes out: the STT stage reads this when its transcript is ready.
        await self._report_speaking()
        for event in events:
            if isinstance(event, SpeechStarted):
                await barge_in(self.r, self.sid)
            elif isinstance(event, Utterance) and not self.forward_audio:
                seq = await count_in_record(self.r, self.sid, keys.RECORD_UTTERANCES)
                log.info("utterance", session_id=self.sid, start_ms=event.start_ms,
                         end_ms=event.end_ms, seq=seq)
                await self.r.xadd(keys.stage_input(self.sid, Stage.STT_BRIDGE),
                                  UtteranceIn(pcm=event.pcm, start_ms=event.start_ms,
                                              end_ms=event.end_ms, seq=seq).encode())
        self.uncheckpointed += processed_ids
        if self.state.pos - self._checkpointed_pos >= CHECKPOINT_EVERY_SAMPLES or events:
            await self._checkpoint()

    async def _report_speaking(self) -> None:
        speaking = self.state.triggered
        if speaking == self._speaking:
            return
        self._speaking = speaking
        fields: dict[str, int] = {keys.RECORD_SPEAKING: int(speaking)}
        if not speaking:
            # The utterance ended after silence_ms of silence: that is when the voice stopped.
            now_ms = int(time.time() * 1000)
            fields[keys.RECORD_LAST_VOICE_MS] = now_ms - self.silence_ms
        await update_record(self.r, self.sid, **fields)

    async def _checkpoint(self) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.set(keys.checkpoint(self.sid, Stage.VAD), self.state.to_bytes(),
                  ex=CHECKPOINT_TTL_S)
            if self.uncheckpointed:
                # Acknowledged audio is deleted: only this stage reads the session's stream.
                stream = keys.stage_input(self.sid, Stage.VAD)
                p.xack(stream, Stage.VAD.value, *self.uncheckpointed)
                p.xdel(stream, *self.uncheckpointed)
            await p.execute()
        self.uncheckpointed.clear()
        self._checkpointed_pos = self.state.pos
