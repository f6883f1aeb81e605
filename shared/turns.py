"""Turns and fencing: every input that starts a turn takes the next number of the session's
counter; whoever emits to the client drops replies of turns below the session's fence.

Which inputs cut earlier turns short (the rule client authors see, README "Turns and
fencing"): a turn is cut only by input the user began after that turn started. An input
begun after the latest turn started (and with no earlier input still waiting to start)
supersedes: it raises the fence to its own number and the turn in flight is cancelled, as
in the original xRx. An input begun before that (utterances that queued up while a worker
stalled and arrive together) waits its turn: every earlier turn runs to its end and each
input gets its own answer, in order. Barge-in cuts the turn that has started (thinking, or
still being spoken) when the user's voice began after it started; turns still waiting to
start are not cut.

When a turn started is recorded by the agent bridge as it starts one
(:func:`mark_turn_started`), on Redis's clock (``TIME``); when an input began is stamped
where it is known, on the same clock: a client's text or action when the gateway takes it
(0 here: "now"), speech where the VAD found its start (the arrival time of its audio in
Redis, not when the VAD processed it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.leases import check_lease
from shared.redis_io import durable

STATE_TTL_S = 24 * 3600

# Fields of keys.turn_started(sid).
STARTED_TURN, STARTED_MS = "turn", "ms"


class TurnSource(StrEnum):
    UTTERANCE = "utterance"


@dataclass(frozen=True)
class TurnStart:
    """A turn handed out: its number, and the fence it set (the turn itself when it
    supersedes every earlier turn, 0 when it waits behind them)."""

    turn: int
    fence: int

    @property
    def supersedes(self) -> bool:
        return self.fence != 0


# --- the rule, as pure functions (the scripts below apply the same) --------------------------


def supersedes(*, last: int, fence: int, started_turn: int, started_ms: int,
               began_ms: int) -> bool:
    """Whether a new input begun at ``began_ms`` cuts the earlier turns short.

    ``last``: the latest turn handed out before it; ``fence``: the session's fence;
    ``started_turn`` / ``started_ms``: the latest turn the agent bridge started, and when.
    """
    if last < max(fence, 1):
        return True  # no earlier turn is alive: there is nothing to wait for
    # The latest turn has started (none is waiting before this input), and before the user
    # began this input: the user spoke or typed over it.
    return started_turn >= last and began_ms >= started_ms


def barge_in_cuts(*, started_turn: int, started_ms: int, voice_ms: int) -> int | None:
    """The turn barge-in cuts (fencing it and every earlier one) when the user's voice began
    at ``voice_ms``; None when that voice began before the latest turn started (late audio of
    an earlier utterance, not speech over the turn). ``started_turn`` 0: no turn has started
    yet (a session from before turn starts were recorded): the caller falls back to every
    turn handed out."""
    if started_turn and voice_ms and voice_ms < started_ms:
        return None
    return started_turn


# --- scripts -------------------------------------------------------------------------------

# Redis's clock in ms, as a string.
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
"""

# KEYS: counter, fence, started, marks. ARGV: ttl, began_ms (0: now), source, mark.
# With a source, a turn starts at most once per (source, mark): marks only grow.
_BEGIN_TURN = _NOW_MS + """
if ARGV[3] ~= '' then
  local seen = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '-1')
  if tonumber(ARGV[4]) <= seen then return {0, 0} end
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[1])
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local st = redis.call('HMGET', KEYS[3], '""" + STARTED_TURN + "', '" + STARTED_MS + """')
local began = tonumber(ARGV[2])
if began <= 0 then began = tonumber(now_ms()) end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local cut
if last < math.max(fence, 1) then
  cut = true
else
  cut = tonumber(st[1] or '0') >= last and began >= tonumber(st[2] or '0')
end
if not cut then return {n, 0} end
if n > fence then redis.call('SET', KEYS[2], n) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {n, n}
"""

# KEYS: started, fence. ARGV: ttl, turn. A fenced turn does not start (-1). Only forward: a
# turn that starts out of order (the rare text/transcript race) does not hide a later one.
_MARK_STARTED = _NOW_MS + """
if tonumber(ARGV[2]) < tonumber(redis.call('GET', KEYS[2]) or '0') then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[1], '""" + STARTED_TURN + """') or '0')
if tonumber(ARGV[2]) < cur then return 0 end
local ms = now_ms()
redis.call('HSET', KEYS[1], '""" + STARTED_TURN + "', ARGV[2], '" + STARTED_MS + """', ms)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return tonumber(ms)
"""

# KEYS: counter, fence, started. ARGV: ttl, voice_ms (0: unknown). Returns {last turn killed,
# 1 when this call raised the fence}, or {-1, 0} when the voice began before the latest turn
# started (nothing is killed).
_KILL_TURNS = """
local st = redis.call('HMGET', KEYS[3], '""" + STARTED_TURN + "', '" + STARTED_MS + """')
local upto = tonumber(st[1] or '0')
local voice = tonumber(ARGV[2])
if upto > 0 and voice > 0 and voice < tonumber(st[2] or '0') then return {-1, 0} end
if upto == 0 then upto = tonumber(redis.call('GET', KEYS[1]) or '0') end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
local raised = 0
if upto + 1 > fence then redis.call('SET', KEYS[2], upto + 1); raised = 1 end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {upto, raised}
"""


# begin_turn and kill_turns are durable writes (shared.redis_io.durable: WAIT for a replica in
# Sentinel mode): a turn number is handed out, and the gateway raises its own fence with it,
# before anything else is written. Lost in a failover, the counter would go back and every
# later turn would fall below the fence the gateway holds, its replies dropped until the
# counter caught up.


async def begin_turn(r: Redis, sid: str, began_ms: int = 0) -> TurnStart:
    """Hand out the next turn for an input the user began at ``began_ms`` (Redis clock; 0:
    now), superseding the earlier turns or not by the rule above."""
    check_lease()
    async with r.pipeline(transaction=False) as p:
        _queue_begin(p, sid, began_ms, "", 0)
        (result,) = await durable(p)
    return _turn_start(result)


async def begin_turn_once(r: Redis, sid: str, source: TurnSource, mark: int,
                          began_ms: int = 0) -> TurnStart | None:
    """:func:`begin_turn` unless ``source`` already started a turn at ``mark`` or later;
    then None."""
    check_lease()
    async with r.pipeline(transaction=False) as p:
        _queue_begin(p, sid, began_ms, source, mark)
        (result,) = await p.execute()
    start = _turn_start(result)
    return start if start.turn else None


def _queue_begin(p: Pipeline, sid: str, began_ms: int, source: str, mark: int) -> None:
    p.eval(_BEGIN_TURN, 4, keys.turn_counter(sid), keys.fence(sid), keys.turn_started(sid),
           keys.turn_marks(sid), STATE_TTL_S, max(began_ms, 0), source, mark)


def _turn_start(result: Any) -> TurnStart:
    turn, fence = result
    return TurnStart(int(turn), int(fence))


# What mark_turn_started replies for a turn below the fence: it does not start.
TURN_FENCED = -1


def mark_turn_started(p: Pipeline, sid: str, turn: int) -> None:
    """Queue on ``p``: the agent bridge starts ``turn`` now (later input begun before now
    waits behind it instead of cutting it short), unless it is fenced. Its reply is when
    (Redis's clock, ms; 0: a later turn had started already; :data:`TURN_FENCED`: the turn
    is below the fence and does not start)."""
    check_lease()
    p.eval(_MARK_STARTED, 2, keys.turn_started(sid), keys.fence(sid), STATE_TTL_S, turn)


@dataclass(frozen=True)
class Kill:
    """What a barge-in cut: every turn up to ``turn``; ``raised`` when this call raised the
    fence (False: an earlier barge-in or a newer input had cut them already)."""

    turn: int
    raised: bool

    @property
    def fence(self) -> int:
        return self.turn + 1


async def kill_turns(r: Redis, sid: str, voice_ms: int = 0) -> Kill | None:
    """Barge-in: fence the turn that has started and every earlier one, if the user's voice
    began (``voice_ms``, Redis clock; 0: unknown) after it started. Return what was cut (turn
    0 when none was ever handed out), or None when the voice began before that turn started
    and nothing was cut."""
    check_lease()
    async with r.pipeline(transaction=False) as p:
        p.eval(_KILL_TURNS, 3, keys.turn_counter(sid), keys.fence(sid), keys.turn_started(sid),
               STATE_TTL_S, max(voice_ms, 0))
        ((upto, raised),) = await durable(p)
    return None if int(upto) < 0 else Kill(int(upto), bool(int(raised)))


async def fence_of(r: Redis, sid: str) -> int:
    return fence_value(await r.get(keys.fence(sid)))


def queue_fence_of(p: Pipeline, sid: str) -> None:
    """:func:`fence_of` as one command of a pipeline; read its reply with :func:`fence_value`."""
    p.get(keys.fence(sid))


def fence_value(raw: bytes | str | None) -> int:
    return int(raw) if raw else 0


def is_fenced(turn: int, fence: int) -> bool:
    return turn != 0 and turn < fence
