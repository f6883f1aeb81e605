"""Client text and actions -> the agent stage's stream, each starting a turn."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import AgentInput, ClientInput
from shared.redis_io import begin_turn


async def publish_input(r: Redis, sid: str, msg: ClientInput) -> int:
    """Start a turn for a text or action and hand it to the agent stage; return its number."""
    turn = await begin_turn(r, sid)
    entry = AgentInput(kind=msg.kind, turn=turn, content=msg.content, action=msg.action,
                       modality=msg.modality)
    await r.xadd(keys.stage_input(sid, Stage.AGENT_BRIDGE), entry.encode())
    return turn

