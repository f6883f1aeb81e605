"""Reads the reply partitions with one blocking XREAD and hands each reply to its client."""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis

from gateway.outlet import Outlet
from shared import keys, topology
from shared.messages import Reply, session_of
from shared.redis_io import TRANSIENT, Backoff, read_streams

log = structlog.get_logger(__name__)

BLOCK_MS = 1000
READ_COUNT = 2000


class ReplyReader:
    """One task per gateway process reads every reply partition, from where it last read.

    The read lists a fixed number of streams however many sessions the gateway serves;
    replies for sessions held by other gateways are skipped after reading one field.
    """

    def __init__(self, r: Redis) -> None:
        self.r = r
        self.outlets: dict[str, Outlet] = {}
        # "$" until the first read: replies written before this gateway started are not ours.
        self._last: dict[str, bytes] = dict.fromkeys(topology.reply_streams(), b"$")
        # Set once the read positions are real ids: a resume replays up to them.
        self.pinned = asyncio.Event()

    def add(self, outlet: Outlet) -> Outlet | None:
        """Register ``outlet``; return the outlet it replaces (the same session resumed on a
        new connection before the old one was noticed gone)."""
        old = self.outlets.get(outlet.sid)
        self.outlets[outlet.sid] = outlet
        return old if old is not outlet else None

    def remove(self, sid: str, outlet: Outlet | None = None) -> None:
        """Unregister the session's outlet (only if it is ``outlet``, when given)."""
        if outlet is None or self.outlets.get(sid) is outlet:
            self.outlets.pop(sid, None)

    def position(self, sid: str) -> bytes:
        """The last id read from the session's reply partition: later entries reach its
        outlet live, earlier ones only by a replay. Valid once ``pinned`` is set."""
        return self._last[keys.reply_partition(topology.partition_of(sid))]

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._read_once()
                backoff.reset()
            except TRANSIENT as err:
                log.warning("redis unavailable, reply reader retrying", error=str(err))
                await backoff.sleep()

    async def _read_once(self) -> None:
        if any(v == b"$" for v in self._last.values()):
            await self._start_at_tail()
        batch = await read_streams(self.r, dict(self._last), count=READ_COUNT,
                                   block_ms=BLOCK_MS)
        for stream, entries in batch:
            self._last[stream.decode()] = entries[-1][0]
            for entry_id, fields in entries:
                outlet = self.outlets.get(session_of(fields))
                if outlet is not None:
                    reply = Reply.decode(fields)
                    if reply.fence:
                        outlet.raise_fence(reply.fence)
                    outlet.push(entry_id, reply)

    async def _start_at_tail(self) -> None:
        """Pin "$" to the current last ids, so a read that returns early does not skip what
        arrives before the next read."""
        async with self.r.pipeline(transaction=False) as p:
            for stream in self._last:
                p.xinfo_stream(stream)
            infos = await p.execute(raise_on_error=False)
        for stream, info in zip(list(self._last), infos, strict=True):
            if isinstance(info, dict):
                self._last[stream] = info["last-generated-id"]
            else:
                self._last[stream] = b"0-0"  # no such stream yet: everything in it is new
        self.pinned.set()


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
