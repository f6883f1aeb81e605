"""Reads every reply stream of this gateway's sessions with one blocking XREAD."""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis

from gateway.outlet import Outlet
from shared import keys
from shared.messages import Reply
from shared.redis_io import TRANSIENT, Backoff, read_streams

log = structlog.get_logger(__name__)

BLOCK_MS = 5000
WAKE_MAXLEN = 100


class ReplyReader:
    """One task per gateway process reads the reply streams of all its sessions.

    A blocked XREAD only covers the sessions it was started with, so adding a session writes
    to this gateway's wake stream, which every read includes.
    """

    def __init__(self, r: Redis, gateway_id: str) -> None:
        self.r = r
        self.wake_key = keys.gateway_wake(gateway_id)
        self.outlets: dict[str, Outlet] = {}
        self._wake_last: bytes = b"$"
        self._by_stream: dict[bytes, str] = {}

    async def add(self, outlet: Outlet) -> None:
        self.outlets[outlet.sid] = outlet
        self._by_stream[keys.reply(outlet.sid).encode()] = outlet.sid
        await self.wake()

    def remove(self, sid: str) -> None:
        self.outlets.pop(sid, None)
        self._by_stream.pop(keys.reply(sid).encode(), None)

    async def wake(self) -> None:
        await self.r.xadd(self.wake_key, {"wake": 1}, maxlen=WAKE_MAXLEN, approximate=True)

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
        streams: dict[str, bytes] = {self.wake_key: self._wake_last}
        for sid, session in self.outlets.items():
            streams[keys.reply(sid)] = session.last_id
        batch = await read_streams(self.r, streams, count=500, block_ms=BLOCK_MS)
        for stream, entries in batch:
            if stream == self.wake_key.encode():
                self._wake_last = entries[-1][0]
                continue
            outlet = self.outlets.get(self._by_stream.get(stream, ""))
            if outlet is None:
                continue
            # Barge-in raises the fence in Redis from another process: read it once per batch.
            raw = await self.r.get(keys.fence(outlet.sid))
            if raw:
                outlet.raise_fence(int(raw))
            for entry_id, fields in entries:
                outlet.push(entry_id, Reply.decode(fields))


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
