"""Barge-in: the user talks over the agent, so the turn it is thinking or speaking stops.

Only a turn that started before the user's voice began is cut (shared/turns.py): audio of an
earlier utterance that the VAD takes late (a backlog after a failover) is not talking over
the answer it precedes, and turns still waiting to start are left to run."""

from __future__ import annotations

import time

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from shared import keys, topology
from shared.keys import Stage
from shared.messages import AgentInput, InputKind, Signal, SpeakIn, SpeakKind, User, signal
from shared.session_record import read_record
from shared.turns import kill_turns

log = structlog.get_logger(__name__)

BARGE_INS = Counter("xrx_barge_ins_total", "Times the user interrupted the agent")


def agent_is_active(record: dict[str, str], now_ms: float) -> bool:
    """Thinking, synthesising, or the client still playing audio it was sent."""
    if record.get(keys.RECORD_AGENT_BUSY) or record.get(keys.RECORD_TTS_BUSY):
        return True
    return float(record.get(keys.RECORD_PLAYBACK_UNTIL, 0)) > now_ms


async def barge_in(r: Redis, sid: str, voice_ms: int = 0) -> bool:
    """Stop the agent if it is active and its turn started before the voice that began at
    ``voice_ms`` (Redis's clock; 0: unknown); return whether it was stopped."""
    if not agent_is_active(await read_record(r, sid), time.time() * 1000):
        return False
    # Fence first: from here on nothing of the interrupted turn reaches the client, whichever
    # replica produces it and however late.
    killed = await kill_turns(r, sid, voice_ms)
    if killed is None:
        log.info("voice from before the turn started: no barge-in", session_id=sid)
        return False
    BARGE_INS.inc()
    log.info("barge-in", session_id=sid, killed_turn=killed)
    clear = signal(sid, 0, Signal.CLEAR_AUDIO_BUFFER, User.SYSTEM)
    clear.fence = killed + 1
    async with r.pipeline(transaction=False) as p:
        topology.reply(p, clear)
        p.hdel(keys.session_record(sid), keys.RECORD_PLAYBACK_UNTIL)
        topology.send(p, Stage.TTS_BRIDGE,
                      SpeakIn(session_id=sid, kind=SpeakKind.CANCEL, turn=killed))
        topology.send(p, Stage.AGENT_BRIDGE,
                      AgentInput(session_id=sid, kind=InputKind.CANCEL, turn=killed,
                                 fence=killed + 1))
        await p.execute()
    return True
