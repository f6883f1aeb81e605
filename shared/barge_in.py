"""Barge-in: the user talks over the agent, and the stage whose work it stops it.

Once the user's voice has lasted ``BARGE_IN_MIN_MS``, the VAD tells both the agent bridge
(``InputKind.VOICE``) and the TTS bridge (``SpeakKind.VOICE``) when it began. Each asks only
itself whether the agent is active: the agent bridge whether it is thinking about a turn,
the TTS bridge whether it was speaking one, or the client still playing what it was sent,
when the VAD told (the voice entry's stream id): a reply that was only waiting, in the
backlog of a replica that died, is not cut when its new owner reads the voice late.
A stage that is raises the fence past the turn that started before the voice
(:func:`shared.turns.kill_turns`); whoever raises it first tells the client to drop the audio
it has queued. From then on no emitter lets anything of the cut turns through.

One gap is closed by the TTS bridge: the agent bridge may finish a turn before the voice
reaches it, and the TTS bridge hear of the voice before that turn's reply (in its stream's
order). Every reply to speak carries when its turn started, so the TTS bridge, finding that
the last voice it heard of began later, decides the barge-in itself. Only speech that began
after the turn started counts: audio the VAD takes late (its backlog after a failover) is
placed at the time it was said, and an utterance said before the answer it precedes does not
cut that answer.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from shared import topology
from shared.messages import Signal, User, signal
from shared.turns import Kill, kill_turns

log = structlog.get_logger(__name__)

BARGE_INS = Counter("xrx_barge_ins_total", "Times the user interrupted the agent")


async def interrupt(r: Redis, sid: str, voice_ms: int) -> Kill | None:
    """Cut the turn that started before the voice that began at ``voice_ms`` (Redis's clock;
    0: unknown) and every earlier one; return what was cut, None when the voice is older than
    that turn. The caller, which found the agent active, stops its own work on the cut turns."""
    kill = await kill_turns(r, sid, voice_ms)
    if kill is None:
        log.info("voice from before the turn started: no barge-in", session_id=sid)
        return None
    if kill.raised:
        BARGE_INS.inc()
        log.info("barge-in", session_id=sid, killed_turn=kill.turn)
        # Its fence reaches the gateway with it: what the cut turns already put in the reply
        # stream is dropped there, not played after the clear.
        clear = signal(sid, 0, Signal.CLEAR_AUDIO_BUFFER, User.SYSTEM)
        clear.fence = kill.fence
        await topology.reply(r, clear)
    return kill
