"""Resuming a session on a new connection: after a dropped connection or a dead gateway.

Replies live in the reply partitions (``xrx:{reply.<n>}:out``, capped by ``REPLY_MAXLEN``),
every entry naming its session, every entry id growing. A client that opted in
(``?session_info=1`` or ``?session_id=...``) gets its session id at connect and an ``id`` on
every reply; it comes back with ``?session_id=<id>&last_id=<id of the last reply it got>``
and the gateway replays the session's entries after ``last_id`` from its partition, then
goes on live (see ``Outlet.start_replay`` for why nothing is lost or repeated in between).

The session id selects keys in Redis, so only the ids this gateway hands out (32 lowercase
hex characters) are accepted; it is a bearer secret: whoever has it (and the API key) can
take the conversation over.
"""

from __future__ import annotations

import dataclasses
import re
from typing import cast

from redis.asyncio import Redis

from shared import keys, topology
from shared.messages import session_of
from shared.redis_io import id_key, time_ms

SESSION_ID_PARAM = "session_id"
LAST_ID_PARAM = "last_id"
SESSION_INFO_PARAM = "session_info"

_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_TRUE = ("1", "true", "yes")

# Entries read per XRANGE call while replaying.
REPLAY_BATCH = 500


class ResumeError(ValueError):
    """A resume request that cannot be accepted (refused with HTTP 400 before accept)."""


@dataclasses.dataclass(frozen=True)
class ResumeRequest:
    """What a client asked for in its URL."""

    session_info: bool = False  # ids wanted: a session message at connect, an id per reply
    session_id: str | None = None  # resume this session
    last_id: bytes = b"0-0"  # the last reply the client received


def parse_request(params: dict[str, str]) -> ResumeRequest:
    """Validate the query parameters; raise ResumeError saying what was wrong."""
    sid = params.get(SESSION_ID_PARAM)
    last = params.get(LAST_ID_PARAM)
    info = params.get(SESSION_INFO_PARAM, "").lower() in _TRUE
    if sid is None:
        if last is not None:
            raise ResumeError(f"{LAST_ID_PARAM} needs {SESSION_ID_PARAM}")
        return ResumeRequest(session_info=info)
    if not _SESSION_ID.fullmatch(sid):
        raise ResumeError(f"invalid {SESSION_ID_PARAM}: expected 32 lowercase hex characters")
    if last is not None and not _STREAM_ID.fullmatch(last):
        raise ResumeError(f"invalid {LAST_ID_PARAM}: expected a reply id such as 1712345678901-0")
    return ResumeRequest(session_info=True, session_id=sid,
                         last_id=(last or "0-0").encode())


# Take a session over if it still exists: the record names the new gateway and its TTL starts
# again. One script, so a record that expires meanwhile is never brought back to life (the
# stages have reaped it and would not pick it up again).
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


async def take_over(r: Redis, sid: str, gateway_id: str, ttl_s: int) -> bool:
    """Make this gateway the session's; False when the session is unknown or expired."""
    ok = await r.eval(_TAKE_OVER, 1, keys.session_record(sid), keys.RECORD_GATEWAY,
                      gateway_id, ttl_s)
    return bool(ok)


Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def missed(r: Redis, sid: str, after: bytes, upto: bytes,
                 keep_s: float) -> tuple[Entries, bool]:
    """The session's reply entries with ``after < id <= upto``, oldest first, and whether the
    partition may have been trimmed past ``after`` by its count cap (``REPLY_MAXLEN``).

    Trimming by age (gateway/reply_trim.py) loses nothing a resume can ask for: it keeps
    ``keep_s``, longer than a session waits for its client. Only the count cap cuts into that
    window, and a partition it trims stays at ``REPLY_MAXLEN`` entries or more until the age
    trim takes over again; a quiet client's old ``last_id`` is no sign of loss by itself."""
    stream = keys.reply_partition(topology.partition_of(sid))
    out: Entries = []
    start = b"(" + after
    while True:
        batch = cast(Entries, await r.xrange(stream, start, upto, count=REPLAY_BATCH))
        out += [(i, f) for i, f in batch if session_of(f) == sid]
        if len(batch) < REPLAY_BATCH:
            break
        start = b"(" + batch[-1][0]
    trimmed = False
    if after != b"0-0":
        async with r.pipeline(transaction=False) as p:
            p.xrange(stream, count=1)
            p.xlen(stream)
            p.time()
            first, length, now = await p.execute()
        now_ms = time_ms(now)
        trimmed = (bool(first) and id_key(first[0][0]) > id_key(after)
                   and length >= topology.REPLY_MAXLEN
                   and id_key(first[0][0])[0] > now_ms - keep_s * 1000)
    return out, trimmed
