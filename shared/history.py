"""The conversation: chat history sent to the agent and the agent's own session dict."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from redis.asyncio.client import Pipeline

from shared import keys
from shared.leases import check_lease
from shared.protocols import SESSION_GUID
from shared.turns import STATE_TTL_S

# Appends once per (kind, turn): a turn handled again after a failover appends nothing new.
# Then keeps only the newest ARGV[3] messages: the agent is sent the last MAX_AGENT_MESSAGES,
# and a long call must not grow its history (and Redis) without bound. Every write sets a
# TTL (ARGV[4]), like the turn counter's: a turn that ends after its session was closed
# would otherwise re-create a key no close will ever expire (the soak found such leftovers).
_APPEND_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


def history_kept(max_agent_messages: int) -> int:
    """Messages a session's history keeps: what the agent is sent plus as many again, so a
    replica started with a larger MAX_AGENT_MESSAGES still finds a full window."""
    return 2 * max_agent_messages


class HistoryKind(StrEnum):
    USER = "user"
    REPLY = "reply"


def queue_append_history(p: Pipeline, sid: str, kind: HistoryKind, turn: int,
                         *messages: dict[str, Any], keep: int) -> bool:
    """Queue the append of ``messages`` unless this turn already appended its ``kind``,
    keeping the newest ``keep`` (see :func:`history_kept`); the command's reply is 1 if it
    appended. False, and nothing queued, when there is nothing to append."""
    check_lease()
    if not messages:
        return False
    p.eval(_APPEND_ONCE, 2, keys.history(sid), keys.history_marks(sid), kind, turn, keep,
           STATE_TTL_S, *(json.dumps(m) for m in messages))
    return True


def queue_context(p: Pipeline, sid: str, limit: int) -> None:
    """Queue the reads of what an agent call is sent: the recent history and the agent's
    session (read back with :func:`agent_context`)."""
    p.lrange(keys.history(sid), -limit, -1)
    p.get(keys.agent_session(sid))


def agent_context(sid: str, raw_history: list[bytes], raw_session: bytes | None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    session = json.loads(raw_session) if raw_session else {SESSION_GUID: sid}
    return [json.loads(m) for m in raw_history], session


def queue_store_agent_session(p: Pipeline, sid: str, session: dict[str, Any]) -> None:
    # A TTL for the same reason as the history's.
    p.set(keys.agent_session(sid), json.dumps(session), ex=STATE_TTL_S)
