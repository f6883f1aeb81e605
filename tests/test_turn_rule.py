"""Which input cuts a turn short (shared/turns.py): the rule as pure functions, and the Redis
scripts that apply it, run on a real redis-server, agreeing with them case by case."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agent_bridge.session import cancelling_fence
from shared import keys
from shared.messages import AgentInput, InputKind
from shared.turns import (
    STARTED_MS,
    STARTED_TURN,
    TURN_FENCED,
    Kill,
    TurnSource,
    barge_in_cuts,
    begin_turn,
    begin_turn_once,
    fence_of,
    kill_turns,
    mark_turn_started,
    supersedes,
)
from tests.conftest import flushed_db
from tests.harness import RedisServer

T0 = 1_700_000_000_000  # a wall-clock instant, ms


def test_input_begun_after_the_turn_started_supersedes_it() -> None:
    # Turn 4 started at T0; the user spoke (or typed) again 1 ms later: the original's rule.
    assert supersedes(last=4, fence=4, started_turn=4, started_ms=T0, began_ms=T0 + 1)
    assert supersedes(last=4, fence=4, started_turn=4, started_ms=T0, began_ms=T0)


def test_input_begun_before_the_turn_started_waits_its_turn() -> None:
    # Said while a worker stalled, arriving right after the turn before it started.
    assert not supersedes(last=4, fence=4, started_turn=4, started_ms=T0, began_ms=T0 - 2500)


def test_input_behind_one_still_waiting_to_start_waits_too() -> None:
    # Turn 5 is handed out but not started (queued behind 4): a later input waits behind it,
    # however late it was begun, rather than cut it before it was ever answered.
    assert not supersedes(last=5, fence=4, started_turn=4, started_ms=T0, began_ms=T0 + 9000)
    # No turn started yet at all, one waiting: the same.
    assert not supersedes(last=1, fence=1, started_turn=0, started_ms=0, began_ms=T0)


def test_input_with_nothing_alive_before_it_supersedes() -> None:
    assert supersedes(last=0, fence=0, started_turn=0, started_ms=0, began_ms=T0)
    # A barge-in fenced everything handed out (fence = last + 1): nothing to wait for.
    assert supersedes(last=7, fence=8, started_turn=6, started_ms=T0, began_ms=T0 - 5000)


def test_barge_in_cuts_only_a_turn_that_started_before_the_voice() -> None:
    assert barge_in_cuts(started_turn=4, started_ms=T0, voice_ms=T0 + 300) == 4
    # Late audio of an utterance said before the turn started (a VAD backlog): no barge-in.
    assert barge_in_cuts(started_turn=4, started_ms=T0, voice_ms=T0 - 1200) is None
    # When the voice began is unknown, it counts as now (the original behaviour).
    assert barge_in_cuts(started_turn=4, started_ms=T0, voice_ms=0) == 4


def test_the_agent_bridge_cancels_only_for_an_input_that_brings_a_fence() -> None:
    assert cancelling_fence(AgentInput(kind=InputKind.TRANSCRIPT, turn=5, fence=5)) == 5
    assert cancelling_fence(AgentInput(kind=InputKind.TRANSCRIPT, turn=5)) == 0  # it waits
    assert cancelling_fence(AgentInput(kind=InputKind.CANCEL, turn=4, fence=5)) == 5
    # A barge-in entry written before entries carried fences: cuts the turn it names.
    assert cancelling_fence(AgentInput(kind=InputKind.CANCEL, turn=4)) == 5


# --- the scripts, on a real Redis ------------------------------------------------------------


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    async with flushed_db(redis_server, 10) as client:
        yield client


async def _state(r: aioredis.Redis, sid: str, *, last: int, fence: int, started_turn: int,
                 started_ms: int) -> None:
    await r.delete(keys.turn_counter(sid), keys.fence(sid), keys.turn_started(sid))
    if last:
        await r.set(keys.turn_counter(sid), last)
    if fence:
        await r.set(keys.fence(sid), fence)
    if started_turn:
        await r.hset(keys.turn_started(sid),
                     mapping={STARTED_TURN: started_turn, STARTED_MS: started_ms})


async def test_begin_turn_applies_the_rule(r: aioredis.Redis) -> None:
    cases = [(last, fence, started, began)
             for last, fence, started in itertools.product((0, 3, 4), (0, 3, 4, 5), (0, 3, 4))
             if started <= last and fence <= last + 1  # states the scripts can reach
             for began in (T0 - 1, T0, T0 + 1)]
    for i, (last, fence, started, began) in enumerate(cases):
        sid = f"rule-{i}"
        await _state(r, sid, last=last, fence=fence, started_turn=started, started_ms=T0)
        start = await begin_turn(r, sid, began)
        expected = supersedes(last=last, fence=fence, started_turn=started, started_ms=T0,
                              began_ms=began)
        assert start.turn == last + 1, (last, fence, started, began)
        assert start.supersedes == expected, (last, fence, started, began)
        now_fence = int(await r.get(keys.fence(sid)) or 0)
        assert now_fence == (start.turn if expected else fence), (last, fence, started, began)


async def test_begin_turn_once_starts_one_turn_per_utterance_by_the_same_rule(
        r: aioredis.Redis) -> None:
    await _state(r, "once", last=4, fence=4, started_turn=4, started_ms=T0)
    first = await begin_turn_once(r, "once", TurnSource.UTTERANCE, 9000, T0 - 10)
    assert first is not None and first.turn == 5 and not first.supersedes
    # The same utterance again (a replica that took over transcribed it again): no turn.
    assert await begin_turn_once(r, "once", TurnSource.UTTERANCE, 9000, T0 - 10) is None
    later = await begin_turn_once(r, "once", TurnSource.UTTERANCE, 12000, T0 + 10)
    assert later is not None and later.turn == 6 and not later.supersedes  # 5 still waits


async def test_a_fenced_turn_does_not_start(r: aioredis.Redis) -> None:
    """The agent bridge starts a turn and reads its fence in one round trip: a turn a newer
    input superseded meanwhile is not recorded as started (it would make input begun before
    that newer one wait behind a turn that never runs)."""
    await _state(r, "fenced", last=6, fence=6, started_turn=4, started_ms=1000)
    async with r.pipeline(transaction=False) as p:
        mark_turn_started(p, "fenced", 5)
        mark_turn_started(p, "fenced", 6)
        fenced, started = await p.execute()
    assert fenced == TURN_FENCED and started > 0
    assert await r.hget(keys.turn_started("fenced"), STARTED_TURN) == b"6"


async def test_a_turn_start_is_stamped_on_redis_clock_and_only_moves_forward(
        r: aioredis.Redis) -> None:
    before = int(time.time() * 1000)
    async with r.pipeline(transaction=False) as p:
        mark_turn_started(p, "mark", 5)
        mark_turn_started(p, "mark", 4)  # out of order: does not hide turn 5
        await p.execute()
    raw = await r.hgetall(keys.turn_started("mark"))
    assert int(raw[STARTED_TURN.encode()]) == 5
    assert before - 50 <= int(raw[STARTED_MS.encode()]) <= int(time.time() * 1000) + 50
    # Text the user sends now supersedes it; an utterance said before it started does not.
    assert (await begin_turn(r, "mark")).supersedes  # 0: now
    await _state(r, "mark", last=5, fence=5, started_turn=5,
                 started_ms=int(raw[STARTED_MS.encode()]))
    assert not (await begin_turn(r, "mark", before - 1000)).supersedes


async def test_kill_turns_fences_the_started_turn_not_the_waiting_ones(
        r: aioredis.Redis) -> None:
    # Turn 4 started at T0, 5 and 6 wait behind it.
    await _state(r, "kill", last=6, fence=4, started_turn=4, started_ms=T0)
    assert await kill_turns(r, "kill", T0 - 1) is None  # late audio: nothing killed
    assert await fence_of(r, "kill") == 4
    assert await kill_turns(r, "kill", T0 + 250) == Kill(4, raised=True)
    assert await fence_of(r, "kill") == 5  # 5 and 6 still alive
    # A second stage hearing the same voice finds the turn cut already.
    assert await kill_turns(r, "kill", T0 + 250) == Kill(4, raised=False)
    # Never lowers the fence.
    await _state(r, "kill", last=6, fence=6, started_turn=4, started_ms=T0)
    assert await kill_turns(r, "kill", T0 + 250) == Kill(4, raised=False)
    assert await fence_of(r, "kill") == 6
    # A session with no turn start recorded: every turn handed out, as before.
    await _state(r, "kill", last=6, fence=4, started_turn=0, started_ms=0)
    assert await kill_turns(r, "kill", T0) == Kill(6, raised=True)
    assert await fence_of(r, "kill") == 7
