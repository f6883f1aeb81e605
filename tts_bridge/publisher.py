"""A spoken reply's audio -> the reply stream, as few round trips as the TTS service allows.

Each round trip publishes every chunk that arrived since the last one began and reads the
session's fence with them. A chunk is never held back for another: the first goes out as it
arrives, and what arrives while a round trip is in flight (a service faster than Redis, or
a burst) joins the next one, so a reply costs one round trip per chunk at worst and two at
best, whatever its length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis

from shared import topology
from shared.messages import Reply
from shared.turns import fence_value, is_fenced, queue_fence_of

# A publish still in flight when its reply is cancelled (barge-in) finishes on its own: a
# round trip cut half-way would leave redis-py's connection unusable.
_DETACHED: set[asyncio.Task[bool]] = set()


async def publish(r: Redis, sid: str, turn: int, replies: list[Reply]) -> bool:
    """Publish ``replies`` and read the fence in one round trip; False when ``turn`` is
    fenced (the replies then never reach the client: the gateway drops them too)."""
    async with r.pipeline(transaction=False) as p:
        queue_fence_of(p, sid)
        for reply in replies:
            topology.reply(p, reply)
        raw, *_ = await p.execute()
    return not is_fenced(turn, fence_value(raw))


class ChunkPublisher:
    """Publishes one turn's replies in order, coalescing those that arrive while a round
    trip is in flight."""

    def __init__(self, r: Redis, sid: str, turn: int,
                 on_first_published: Callable[[], None] = lambda: None) -> None:
        self.r, self.sid, self.turn = r, sid, turn
        self._on_first_published: Callable[[], None] | None = on_first_published
        self.fenced = False
        self._waiting: list[Reply] = []
        self._inflight: asyncio.Task[bool] | None = None

    def add(self, reply: Reply) -> bool:
        """Queue ``reply``, sent now if no round trip is in flight; False once the turn is
        known to be fenced (stop producing). Raises what a finished round trip raised."""
        self._waiting.append(reply)
        if self._inflight is not None:
            if not self._inflight.done():
                return True
            if not self._inflight.result():
                self.fenced = True
                return False
        self._send()
        return True

    async def flush(self, *last: Reply) -> bool:
        """Wait for the round trip in flight, then publish what is waiting and ``last`` in
        one more; False when the turn is fenced."""
        if self._inflight is not None and not await self._inflight:
            self.fenced = True
            return False
        self._inflight = None
        batch, self._waiting = self._waiting + list(last), []
        if not batch:
            return True
        ok = await publish(self.r, self.sid, self.turn, batch)
        self.fenced = not ok
        return ok

    def detach(self) -> None:
        """The turn stops here (cancelled): a round trip in flight completes unwatched."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            _DETACHED.add(task)
            task.add_done_callback(_forget)

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        self._inflight = asyncio.create_task(publish(self.r, self.sid, self.turn, batch))
        if self._on_first_published is not None:
            callback, self._on_first_published = self._on_first_published, None
            self._inflight.add_done_callback(
                lambda t: None if t.cancelled() or t.exception() or not t.result()
                else callback())


def _forget(task: asyncio.Task[bool]) -> None:
    _DETACHED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failure there changes nothing for a cancelled turn
