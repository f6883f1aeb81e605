"""A final transcript becomes a user turn: echoed to the client, handed to the agent stage."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from shared import latency, topology
from shared.keys import Stage
from shared.latency import Step
from shared.messages import AgentInput, InputKind, Modality, MsgType, Reply, User
from shared.turns import TurnSource, begin_turn, begin_turn_once

log = structlog.get_logger(__name__)


async def publish_transcript(r: Redis, sid: str, text: str, *,
                             utterance_start_ms: int | None = None, voice_end_ms: int = 0,
                             voice_start_ms: int = 0) -> int:
    """Start the transcript's turn and publish it; with ``utterance_start_ms`` (its last
    utterance's start), only once per utterance: a replica that took the session over and
    transcribes again what its dead owner already published does nothing (returns 0).
    ``voice_end_ms``: when the voice of a spoken turn stopped (0: unknown);
    ``voice_start_ms``: when the user began saying it (0: unknown, taken as now), which
    decides whether it cuts the turn in flight short or waits behind it (shared/turns.py)."""
    if utterance_start_ms is None:
        start = await begin_turn(r, sid, voice_start_ms)
    else:
        once = await begin_turn_once(r, sid, TurnSource.UTTERANCE, utterance_start_ms,
                                     voice_start_ms)
        if once is None:
            log.info("utterance already transcribed", session_id=sid,
                     start_ms=utterance_start_ms)
            return 0
        start = once
    turn = start.turn
    # What the user said is theirs: at INFO only its size; the words at DEBUG.
    log.info("transcript", session_id=sid, turn=turn, chars=len(text),
             supersedes=start.supersedes)
    log.debug("transcript text", session_id=sid, turn=turn, text=text)
    async with r.pipeline(transaction=False) as p:
        # A turn that supersedes fences every earlier one: the gateway learns it with the
        # transcript. One that waits fences nothing: the earlier turns' replies go on.
        topology.reply(p, Reply(session_id=sid, turn=turn, user=User.USER, type=MsgType.AUDIO,
                                content=text, fence=start.fence))
        topology.send(p, Stage.AGENT_BRIDGE,
                      AgentInput(session_id=sid, kind=InputKind.TRANSCRIPT, turn=turn,
                                 content=text, modality=Modality.AUDIO,
                                 voice_end_ms=voice_end_ms, fence=start.fence))
        await p.execute()
    latency.observe(Step.TRANSCRIPT, voice_end_ms, session_id=sid, turn=turn)
    return turn
