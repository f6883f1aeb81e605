"""Turns and fencing: every input that starts a turn takes the next number of the session's
counter and fences every earlier turn; barge-in fences the turn in flight without starting one.
Whoever emits to the client drops replies of fenced turns."""

from __future__ import annotations

from enum import StrEnum

from redis.asyncio import Redis

from shared import keys
from shared.leases import check_lease
from shared.redis_io import durable

# A new input starts turn N and kills every earlier turn (fence = N).
_BEGIN_TURN = """
local n = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], n)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""

# Barge-in kills the turn in flight without starting one: the next input gets counter + 1.
_KILL_TURNS = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[2], n + 1)
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""

STATE_TTL_S = 24 * 3600


# Both are durable writes (shared.redis_io.durable: WAIT for a replica in Sentinel mode): a
# turn number is handed out, and the gateway raises its own fence with it, before anything
# else is written. Lost in a failover, the counter would go back and every later turn would
# fall below the fence the gateway holds, its replies dropped until the counter caught up.


async def begin_turn(r: Redis, sid: str) -> int:
    check_lease()
    async with r.pipeline(transaction=False) as p:
        p.eval(_BEGIN_TURN, 2, keys.turn_counter(sid), keys.fence(sid), STATE_TTL_S)
        (n,) = await durable(p)
    return int(n)


class TurnSource(StrEnum):
    UTTERANCE = "utterance"


# A turn started at most once per (source, mark): marks only grow.
_BEGIN_TURN_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '-1')
if tonumber(ARGV[3]) <= last then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
local n = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], n)
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""


async def begin_turn_once(r: Redis, sid: str, source: TurnSource, mark: int) -> int:
    """:func:`begin_turn` unless ``source`` already started a turn at ``mark`` or later;
    then 0."""
    check_lease()
    n = await r.eval(_BEGIN_TURN_ONCE, 3, keys.turn_counter(sid), keys.fence(sid),
                     keys.turn_marks(sid), STATE_TTL_S, source, mark)
    return int(n)


async def kill_turns(r: Redis, sid: str) -> int:
    """Fence every turn started so far; return the last turn killed (0 when none)."""
    check_lease()
    async with r.pipeline(transaction=False) as p:
        p.eval(_KILL_TURNS, 2, keys.turn_counter(sid), keys.fence(sid), STATE_TTL_S)
        (n,) = await durable(p)
    return int(n)


async def fence_of(r: Redis, sid: str) -> int:
    raw = await r.get(keys.fence(sid))
    return int(raw) if raw else 0


def is_fenced(turn: int, fence: int) -> bool:
    return turn != 0 and turn < fence
