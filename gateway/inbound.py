"""Client frames -> Redis Streams. Every frame is validated here, once."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys
from shared.keys import Stage
from shared.messages import (
    AgentInput,
    ClientInput,
    FrameError,
    parse_client_frame,
)
from shared.redis_io import begin_turn


def parse_text_frame(raw: str) -> ClientInput:
    return parse_client_frame(raw)


def check_audio_frame(data: bytes) -> None:
    if not data:
        raise FrameError("empty binary frame: expected 16-bit PCM samples")
    if len(data) % 2:
        raise FrameError(
            f"binary frame of {len(data)} bytes is not whole 16-bit samples (odd length)")


async def publish_input(r: Redis, sid: str, msg: ClientInput) -> int:
    """Start a turn for a text or action and hand it to the agent stage; return its number."""
    turn = await begin_turn(r, sid)
    entry = AgentInput(kind=msg.kind, turn=turn, content=msg.content, action=msg.action,
                       modality=msg.modality)
    await r.xadd(keys.stage_input(sid, Stage.AGENT_BRIDGE), entry.encode())
    return turn

