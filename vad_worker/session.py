"""The VAD stage's per-session logic: queue audio for the batcher, publish what it finds.

A checkpoint is the model state plus an offset (the last input entry it covers): a replica
taking the session over restores it and skips re-delivered entries up to the offset. The
utterance in progress is appended to the checkpoint's audio key as it grows instead of being
copied whole on every save. Inputs are acknowledged only once a checkpoint covers them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys, latency, topology
from shared.keys import Stage
from shared.latency import Step
from shared.messages import (
    AgentInput,
    AudioIn,
    InputKind,
    SpeakIn,
    SpeakKind,
    SpeechKind,
    UtteranceIn,
    error_reply,
)
from shared.ownership import Acker
from shared.redis_io import Fields, id_key
from vad_worker.events import SilenceStarted, SpeechStarted, Utterance, VadEvent
from vad_worker.rechunk import SAMPLE_RATE
from vad_worker.speculation import tentative_entry, wall_ms
from vad_worker.state import SessionVadState

if TYPE_CHECKING:
    from vad_worker.batcher import VadBatcher

log = structlog.get_logger(__name__)

# Audio between checkpoints: what a replica taking over the session processes again.
CHECKPOINT_EVERY_SAMPLES = 16000
CHECKPOINT_TTL_S = 3600
STATE_FIELD, OFFSET_FIELD, AUDIO_LEN_FIELD = "state", "offset", "audio_len"
AUDIO_SHED = ("the service is overloaded: some of your audio arrived too late and was "
              "dropped")

SHED_FRAMES = Counter("xrx_vad_audio_shed_total", "Audio entries dropped as too late")

# One session's checkpoint, atomically: the state and its offset, and the utterance audio
# replaced (a new utterance), extended, or dropped (none in progress).
_SAVE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[1] == 'set' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
elseif ARGV[1] == 'append' then redis.call('APPEND', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
elseif ARGV[1] == 'del' then redis.call('DEL', KEYS[2]) end
return 1
"""


class VadSession:
    """Per-session audio queue in front of the shared batcher."""

    def __init__(self, r: Redis, sid: str, acker: Acker, state: SessionVadState,
                 batcher: VadBatcher, *, offset: bytes = b"0-0", saved_audio: int = 0,
                 forward_audio: bool = False, max_lag_ms: int = 3000) -> None:
        self.silence_ms = batcher.engine.params.silence_ms
        self.r, self.sid, self.acker, self.state, self.batcher = r, sid, acker, state, batcher
        # Streaming STT: audio goes on as it comes; the VAD only detects barge-in.
        self.forward_audio = forward_audio
        self.max_lag_ms = max_lag_ms
        self.pending: list[tuple[bytes, bytes]] = []  # (entry id, pcm) not yet processed
        self.uncheckpointed: list[bytes] = []
        self.offset = id_key(offset)  # the last entry the state has consumed
        self._offset_id = offset
        self._checkpointed_pos = state.pos
        self._saved_start = state.buf_start if state.triggered else -1
        self._saved_len = saved_audio
        self.closed = False
        self.leaving = False  # being handed over: no new batch takes it up
        self._speaking = state.triggered
        self._shedding = False
        # When the newest processed audio reached Redis (its entry id; Redis's clock): the
        # wall-clock anchor of the session's audio clock.
        self._live_ms = 0

    @classmethod
    async def restore(cls, r: Redis, sid: str, acker: Acker, batcher: VadBatcher, *,
                      forward_audio: bool = False, max_lag_ms: int = 3000) -> VadSession:
        async with r.pipeline(transaction=False) as p:
            p.hgetall(keys.checkpoint(sid, Stage.VAD))
            p.get(keys.checkpoint_audio(sid, Stage.VAD))
            saved, audio = await p.execute()
        saved = cast(dict[bytes, bytes], saved)
        if not saved:
            return cls(r, sid, acker, SessionVadState(session_id=sid), batcher,
                       forward_audio=forward_audio, max_lag_ms=max_lag_ms)
        state = SessionVadState.from_bytes(saved[STATE_FIELD.encode()])
        audio_len = int(saved.get(AUDIO_LEN_FIELD.encode(), 0))
        if state.triggered:
            state.buffer = bytearray((audio or b"")[:audio_len])
        log.info("vad state restored from checkpoint", session_id=sid, pos=state.pos,
                 utterance_bytes=len(state.buffer))
        return cls(r, sid, acker, state, batcher, offset=saved[OFFSET_FIELD.encode()],
                   saved_audio=len(state.buffer), forward_audio=forward_audio,
                   max_lag_ms=max_lag_ms)

    async def handle(self, entry_id: bytes, fields: Fields) -> bool:
        entry = AudioIn.decode(fields)
        if entry.close:
            self.closed = True
            ids = [i for i, _ in self.pending] + self.uncheckpointed + [entry_id]
            self.pending.clear()
            self.uncheckpointed.clear()
            self.acker.ack(*ids)
            await self.r.delete(keys.checkpoint(self.sid, Stage.VAD),
                                keys.checkpoint_audio(self.sid, Stage.VAD))
            return True
        order = id_key(entry_id)
        if order <= self.offset:
            self.acker.ack(entry_id)  # consumed before the checkpoint this state came from
            return False
        lag_ms = time.time() * 1000 - order[0]
        if lag_ms > self.max_lag_ms:
            await self._shed(entry_id)
            return False
        if lag_ms < self.max_lag_ms / 2:
            # Caught up: the next episode is told again. Not before, so a lag hovering
            # around the limit does not flap into a message every few frames.
            self._shedding = False
        self.pending.append((entry_id, entry.pcm))
        self.batcher.submit(self)
        return False

    async def _shed(self, entry_id: bytes) -> None:
        """Too late to be live audio: drop it rather than fall further behind, and say so
        once per episode."""
        SHED_FRAMES.inc()
        self.acker.ack(entry_id)
        if not self._shedding:
            self._shedding = True
            log.warning("audio arriving too late, shedding", session_id=self.sid)
            await topology.reply(self.r, error_reply(self.sid, AUDIO_SHED))

    async def close(self, *, handing_over: bool) -> None:
        if self.closed:
            return
        if handing_over:
            # Leave a checkpoint of everything processed; what is still queued stays
            # unacknowledged for the next owner. The batch working on this session (if any)
            # still publishes what it found: the checkpoint comes after it.
            self.leaving = True
            await self.batcher.settled(self)
            # Only while the lease holds: a replica that lost it unawares (woken from a pause
            # longer than the lease) would overwrite the newer checkpoint of the replica that
            # ran the session meanwhile with its stale state.
            if self.acker.lease.valid():
                async with self.r.pipeline(transaction=False) as p:
                    self._queue_checkpoint(p)
                    await p.execute()
                self.acker.ack(*self.uncheckpointed)
            self.uncheckpointed.clear()
        self.closed = True

    def take_pending(self) -> tuple[list[bytes], bytes]:
        ids = [i for i, _ in self.pending]
        pcm = b"".join(p for _, p in self.pending)
        self.pending.clear()
        return ids, pcm

    def publish(self, p: Pipeline, events: list[VadEvent], processed_ids: list[bytes],
                pcm: bytes) -> list[bytes]:
        """Queue on ``p`` what this batch found and, when due, a checkpoint; return the
        entries to acknowledge once ``p`` has run. Nothing, once this replica's lease on the
        session's partition has run out: another replica has the session now."""
        if self.closed or not self.acker.lease.valid():
            return []
        if processed_ids:
            self._offset_id = processed_ids[-1]
            self.offset = id_key(self._offset_id)
            self._live_ms = self.offset[0]
        elif not self._live_ms:
            self._live_ms = int(time.time() * 1000)
        if self.forward_audio and pcm:
            topology.send(p, Stage.STT_BRIDGE,
                          UtteranceIn(session_id=self.sid, kind=SpeechKind.STREAM, pcm=pcm))
        for event in events:
            if isinstance(event, SilenceStarted) and not self.forward_audio:
                topology.send(p, Stage.STT_BRIDGE,
                              tentative_entry(self.sid, self.state, event, self._live_ms))
            elif isinstance(event, Utterance) and not self.forward_audio:
                log.info("utterance", session_id=self.sid, start_ms=event.start_ms,
                         end_ms=event.end_ms)
                # One entry says both that the voice stopped and what was said: the STT
                # stage must never see the one without the other.
                self._speaking = False
                voice_end_ms = self._wall(event.voice_end_ms)
                topology.send(p, Stage.STT_BRIDGE, UtteranceIn(
                    session_id=self.sid, kind=SpeechKind.UTTERANCE, pcm=event.pcm,
                    start_ms=event.start_ms, end_ms=event.end_ms, voice_end_ms=voice_end_ms,
                    voice_start_ms=self._wall(event.voice_start_ms)))
                latency.observe(Step.UTTERANCE, voice_end_ms, session_id=self.sid, turn=0)
        self._report_speaking(p, speaking=self.state.triggered)
        if (voice_ms := self.barge_in_voice(events)) is not None:
            # Whether this interrupts anything is for the stages doing the work to say
            # (shared/barge_in.py).
            topology.send(p, Stage.AGENT_BRIDGE, AgentInput(
                session_id=self.sid, kind=InputKind.VOICE, voice_start_ms=voice_ms))
            topology.send(p, Stage.TTS_BRIDGE, SpeakIn(
                session_id=self.sid, kind=SpeakKind.VOICE, voice_start_ms=voice_ms))
        self.uncheckpointed += processed_ids
        if self.state.pos - self._checkpointed_pos >= CHECKPOINT_EVERY_SAMPLES or events:
            self._queue_checkpoint(p)
            done, self.uncheckpointed = self.uncheckpointed, []
            return done
        return []

    def barge_in_voice(self, events: list[VadEvent]) -> int | None:
        """When (wall clock) the voice that is long enough for barge-in began, if this batch
        found one: barge-in cuts only a turn that started before it."""
        if self.closed or not events:
            return None
        return next((self._wall(e.voice_start_ms) for e in events
                     if isinstance(e, SpeechStarted)), None)

    def _wall(self, audio_ms: int) -> int:
        return wall_ms(self.state, audio_ms, self._live_ms)

    def _report_speaking(self, p: Pipeline, *, speaking: bool) -> None:
        if speaking == self._speaking:
            return
        self._speaking = speaking
        if speaking:
            entry = UtteranceIn(session_id=self.sid, kind=SpeechKind.SPEAKING,
                                voice_start_ms=self._wall(
                                    self.state.voice_start * 1000 // SAMPLE_RATE))
        else:
            entry = UtteranceIn(session_id=self.sid, kind=SpeechKind.QUIET,
                                voice_end_ms=self._voice_end_ms())
        topology.send(p, Stage.STT_BRIDGE, entry)

    def _voice_end_ms(self) -> int:
        # The utterance ended after silence_ms of silence: that is when the voice stopped.
        return self._live_ms - self.silence_ms

    def _queue_checkpoint(self, p: Pipeline) -> None:
        st = self.state
        audio, mode = b"", "keep"
        if not st.triggered:
            if self._saved_len:
                mode = "del"
            self._saved_start, self._saved_len = -1, 0
        elif st.buf_start != self._saved_start or len(st.buffer) < self._saved_len:
            audio, mode = bytes(st.buffer), "set"
            self._saved_start, self._saved_len = st.buf_start, len(st.buffer)
        elif len(st.buffer) > self._saved_len:
            audio, mode = bytes(st.buffer[self._saved_len:]), "append"
            self._saved_len = len(st.buffer)
        # mode, audio, TTL, then the checkpoint's fields: named here only.
        p.eval(_SAVE, 2, keys.checkpoint(self.sid, Stage.VAD),
               keys.checkpoint_audio(self.sid, Stage.VAD), mode, audio, CHECKPOINT_TTL_S,
               STATE_FIELD, st.to_bytes(with_audio=False), OFFSET_FIELD, self._offset_id,
               AUDIO_LEN_FIELD, self._saved_len)
        self._checkpointed_pos = st.pos
