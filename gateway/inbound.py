"""Client text and actions -> the agent stage, each starting a turn."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import topology
from shared.keys import Stage
from shared.messages import AgentInput, ClientInput
from shared.redis_io import durable
from shared.turns import TurnStart, begin_turn


async def publish_input(r: Redis, sid: str, msg: ClientInput) -> TurnStart:
    """Start a turn for a text or action and hand it to the agent stage. The user sent it
    now: it supersedes the turn in flight unless an earlier input is still waiting to start
    (shared/turns.py)."""
    start = await begin_turn(r, sid)
    # Durable: the client's message exists nowhere else; lost in a failover, it is never
    # answered (a write derived from another stream entry is redone from it instead).
    async with r.pipeline(transaction=False) as p:
        topology.send(p, Stage.AGENT_BRIDGE,
                      AgentInput(session_id=sid, kind=msg.kind, turn=start.turn,
                                 content=msg.content, action=msg.action,
                                 modality=msg.modality, fence=start.fence))
        await durable(p)
    return start
