"""A final transcript becomes a user turn: echoed to the client, handed to the agent stage."""

from __future__ import annotations

import structlog
from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import AgentInput, InputKind, Modality, MsgType, Reply, User
from shared.redis_io import begin_turn, publish_reply

log = structlog.get_logger(__name__)


async def publish_transcript(r: Redis, sid: str, text: str) -> int:
    turn = await begin_turn(r, sid)
    log.info("transcript", session_id=sid, turn=turn, text=text)
    await publish_reply(r, sid, Reply(turn=turn, user=User.USER, type=MsgType.AUDIO, content=text))
    await r.xadd(keys.stage_input(sid, Stage.AGENT_BRIDGE),
                 AgentInput(kind=InputKind.TRANSCRIPT, turn=turn, content=text,
                            modality=Modality.AUDIO).encode())
    return turn
