"""A final transcript becomes a user turn: echoed to the client, handed to the agent stage."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from shared import topology
from shared.keys import Stage
from shared.messages import AgentInput, InputKind, Modality, MsgType, Reply, User
from shared.turns import begin_turn

log = structlog.get_logger(__name__)


async def publish_transcript(r: Redis, sid: str, text: str) -> int:
    turn = await begin_turn(r, sid)
    log.info("transcript", session_id=sid, turn=turn, text=text)
    async with r.pipeline(transaction=False) as p:
        # The new turn fences every earlier one: the gateway learns it with the transcript.
        topology.reply(p, Reply(session_id=sid, turn=turn, user=User.USER, type=MsgType.AUDIO,
                                content=text, fence=turn))
        topology.send(p, Stage.AGENT_BRIDGE,
                      AgentInput(session_id=sid, kind=InputKind.TRANSCRIPT, turn=turn,
                                 content=text, modality=Modality.AUDIO))
        await p.execute()
    return turn
