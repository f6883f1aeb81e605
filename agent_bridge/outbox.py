"""Where a turn's replies go: straight to the client, or through speech first."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import topology
from shared.keys import Stage
from shared.messages import Modality, MsgType, Reply, SpeakIn, SpeakKind, User
from shared.turns import fence_value, is_fenced, queue_fence_of


class TurnFenced(Exception):
    """The turn was cancelled elsewhere (barge-in, a newer input): stop producing for it."""


class Outbox:
    """Publishes one turn's output, refusing once the turn is fenced.

    In an audio turn, replies are queued for the TTS stage, which speaks them and releases
    each message to the client in order, holding later ones while earlier ones are spoken.
    """

    def __init__(self, r: Redis, sid: str, turn: int, modality: Modality,
                 voice_end_ms: int = 0) -> None:
        self.r, self.sid, self.turn, self.modality = r, sid, turn, modality
        self._outputs = 0
        self._voice_end_ms = voice_end_ms  # goes with the first reply to speak only
        # When the turn started (Redis's clock, ms), sent with every reply to speak: the TTS
        # stage cuts the turn if a voice it heard of before the reply began after that
        # (shared/barge_in.py).
        self.started_ms = 0

    async def direct(self, reply: Reply) -> None:
        """Control signals: never held behind speech."""
        await topology.reply(self.r, reply)

    async def say(self, text: str, *, agent_output: bool = True) -> None:
        """Agent text: shown, and spoken in an audio turn. Texts of our own (notices, error
        messages) are not agent outputs: whether they occur depends on timing, so they must
        not shift the numbering."""
        await self._emit(text, MsgType.AUDIO, speak=True, numbered=agent_output)

    async def widget(self, payload: str) -> None:
        await self._emit(payload, MsgType.WIDGET, speak=False, numbered=True)

    async def _emit(self, content: str, type_: MsgType, *, speak: bool, numbered: bool) -> None:
        seq = 0
        if numbered:
            self._outputs += 1
            seq = self._outputs
        # The fence is read in the same round trip as the output is written: an output of a
        # fenced turn never reaches the client (the TTS stage and the gateway drop it), and
        # the turn stops here.
        async with self.r.pipeline(transaction=False) as p:
            queue_fence_of(p, self.sid)
            if self.modality == Modality.AUDIO:
                voice_end_ms = self._voice_end_ms if speak else 0
                if speak:
                    self._voice_end_ms = 0
                topology.send(p, Stage.TTS_BRIDGE, SpeakIn(
                    session_id=self.sid, kind=SpeakKind.SPEAK, turn=self.turn,
                    text=content if speak else "", user=User.AGENT, type=type_,
                    content=content, seq=seq, voice_end_ms=voice_end_ms,
                    turn_started_ms=self.started_ms))
            else:
                topology.reply(p, Reply(session_id=self.sid, turn=self.turn, user=User.AGENT,
                                        type=type_, content=content, seq=seq))
            raw, _ = await p.execute()
        if is_fenced(self.turn, fence_value(raw)):
            raise TurnFenced()

    async def cancel_speech(self) -> None:
        await topology.send(self.r, Stage.TTS_BRIDGE,
                            SpeakIn(session_id=self.sid, kind=SpeakKind.CANCEL, turn=self.turn))
