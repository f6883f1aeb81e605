"""Where a new session goes: an id whose partition is on the least-loaded replica.

A session's partition is a hash of its id, so the gateway places a session by choosing its
id: it draws ids until one hashes to the partition it wants (``PARTITIONS`` draws on average,
microseconds). The load is what the VAD stage's holders report as they heartbeat (the stage
that costs the most per session), plus what this gateway placed since it last looked.
"""

from __future__ import annotations

import time
import uuid
from typing import cast

from redis.asyncio import Redis

from shared import keys, topology
from shared.keys import Stage
from shared.redis_io import TRANSIENT

REFRESH_S = 1.0
MAX_DRAWS = 10_000


def least_loaded(load: dict[int, tuple[str, int]], partitions: int) -> int | None:
    """The emptiest partition of the replica with the fewest sessions; None without data."""
    if not load:
        return None
    per_holder: dict[str, int] = {}
    for holder, count in load.values():
        per_holder[holder] = per_holder.get(holder, 0) + count
    holder = min(per_holder, key=lambda h: (per_holder[h], h))
    candidates = [n for n, (h, _) in load.items() if h == holder and n < partitions]
    return min(candidates, key=lambda n: (load[n][1], n)) if candidates else None


def session_id_in(partition: int | None) -> str:
    sid = uuid.uuid4().hex
    if partition is None:
        return sid
    for _ in range(MAX_DRAWS):
        if topology.partition_of(sid) == partition:
            return sid
        sid = uuid.uuid4().hex
    return sid


class Placement:
    def __init__(self, r: Redis, stage: Stage = Stage.VAD) -> None:
        self.r, self.key = r, keys.stage_load(stage)
        self._load: dict[int, tuple[str, int]] = {}
        self._fetched = 0.0

    async def new_session_id(self) -> str:
        if time.monotonic() - self._fetched > REFRESH_S:
            self._fetched = time.monotonic()
            try:
                raw = cast(dict[bytes, bytes], await self.r.hgetall(self.key))
            except TRANSIENT:
                raw = {}  # opening the session will report Redis being down
            self._load = {}
            for n, v in raw.items():
                holder, _, count = v.decode().rpartition(" ")
                self._load[int(n)] = (holder, int(count))
        target = least_loaded(self._load, topology.partitions())
        if target is not None:
            holder, placed = self._load[target]
            self._load[target] = (holder, placed + 1)  # until the holders report again
        return session_id_in(target)
