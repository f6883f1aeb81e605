"""The conversation: chat history sent to the agent and the agent's own session dict."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.leases import check_lease

# Appends once per (kind, turn): a turn handled again after a failover appends nothing new.
_APPEND_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return 1
"""


class HistoryKind(StrEnum):
    USER = "user"
    REPLY = "reply"


async def append_history(r: Redis, sid: str, kind: HistoryKind, turn: int,
                         *messages: dict[str, Any]) -> bool:
    """Append ``messages`` unless this turn already appended its ``kind``."""
    check_lease()
    if not messages:
        return False
    done = await r.eval(_APPEND_ONCE, 2, keys.history(sid), keys.history_marks(sid), kind,
                        turn, *(json.dumps(m) for m in messages))
    return bool(done)


def queue_context(p: Pipeline, sid: str, limit: int) -> None:
    """Queue the reads of what an agent call is sent: the recent history and the agent's
    session (read back with :func:`agent_context`)."""
    p.lrange(keys.history(sid), -limit, -1)
    p.get(keys.agent_session(sid))


def agent_context(sid: str, raw_history: list[bytes], raw_session: bytes | None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    session = json.loads(raw_session) if raw_session else {"guid": sid}
    return [json.loads(m) for m in raw_history], session


async def store_agent_session(r: Redis, sid: str, session: dict[str, Any]) -> None:
    await r.set(keys.agent_session(sid), json.dumps(session))
