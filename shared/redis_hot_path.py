"""The cost of one Redis round trip in redis-py's asyncio client, cut where it is overhead.

Every stage makes thousands of round trips a second under load, and redis-py's asyncio
client spent about 190 us of user CPU on a three-command pipeline here against about 20 us
for the same bytes over a bare asyncio socket (``python -m bench.floors``). Where it went
(cProfile): the command packer (pure Python in the asyncio client; the synchronous client
uses hiredis), the blocking pool's condition, timeout and observability hooks on every
checkout and return, a task per pipeline to shield the connection's return, a ``wait_for``
task per send, and one timeout context per reply even when the reply is already buffered.
This module keeps redis-py's behaviour (retries, reconnects, Sentinel, errors) and takes
those off the common path:

- :class:`LeanConnection` packs with hiredis, and reads a reply hiredis already holds
  without arming a timeout (a pipeline's replies arrive together: one timeout for the
  first, none for the rest).
- :class:`LeanConnection` also sends without ``wait_for`` when the socket takes the whole
  command at once (the timeout only matters while a send waits to drain).
- :class:`LeanPool` hands out an idle connected connection, and takes one back, without
  the condition, the timeout or the hooks; when none is idle, a caller waits for one, or
  the pool is in maintenance, it is redis-py's blocking pool as before.
- :class:`LeanPipeline` gives its connection back without a shielded task when the pool
  can take it without awaiting anything (nothing to cut in half by a cancellation).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool

try:  # what redis-py's hiredis reader returns for "no complete reply buffered yet"
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH
except ImportError:  # an older redis-py: KNOWN is then False and nothing here reads
    _NOT_ENOUGH = False
# A RESP3 push (hiredis 3+); a class nothing is an instance of where there is none.
_PUSH: type = getattr(hiredis, "PushNotification", type("NoPush", (), {}))


class LeanConnection(AbstractConnection):
    """A mixin over whichever connection class the URL or Sentinel chose (see :func:`lean`)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # Multi-word command names ("CLIENT SETNAME") go as separate words, as redis-py's
        # own packer sends them.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as err:
            raise rexc.DataError(f"cannot send {args[0]!r} to Redis: {err}") from None

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(self.pack_command(*cmd)[0] for cmd in commands)]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        writer = self._writer
        if writer is None or not isinstance(command, list | bytes):
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()
        try:
            writer.writelines([command] if isinstance(command, bytes) else command)
            # Sent at once (the common case, a few KB into an idle socket): no drain to
            # wait for, so no timeout to arm (redis-py's wait_for makes a task per send).
            if writer.transport.get_write_buffer_size():
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise rexc.TimeoutError("Timeout writing to socket") from None
        except OSError as err:
            await self.disconnect(nowait=True)
            raise rexc.ConnectionError(f"Error while writing to socket: {err}") from err
        except BaseException:
            # Part of a command may be on the wire: the connection cannot be used again.
            await self.disconnect(nowait=True)
            raise

    def _hiredis_reader(self) -> hiredis.Reader | None:
        reader = getattr(self._parser, "_reader", None)
        return reader if isinstance(reader, hiredis.Reader) else None

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None,
                            *, disconnect_on_error: bool = True,
                            push_request: bool | None = False) -> Any:
        reader = self._hiredis_reader()
        # Only the plain case: a reply hiredis already holds, no per-call timeout, not a push
        # notification (RESP3, redis-py 8's default, may interleave those). Anything else
        # goes redis-py's way, timeout and all.
        if reader is not None and timeout is None and not push_request:
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not _NOT_ENOUGH:
                if isinstance(response, _PUSH):
                    parser: Any = self._parser
                    await parser.handle_push_response(response)
                    return await self.read_response(disable_decoding,
                                                    disconnect_on_error=disconnect_on_error)
                if isinstance(response, list) and response and isinstance(
                        response[0], rexc.ConnectionError):
                    response = response[0]
                if isinstance(response, rexc.ConnectionError):
                    if disconnect_on_error:
                        await self.disconnect(nowait=True)
                    raise response
                if self.health_check_interval:
                    self.next_health_check = (asyncio.get_running_loop().time()
                                              + self.health_check_interval)
                if isinstance(response, rexc.ResponseError):
                    raise response from None
                return response
        return await super().read_response(disable_decoding, timeout,
                                           disconnect_on_error=disconnect_on_error,
                                           push_request=push_request)

    def dirty(self) -> bool | None:
        """Whether this connection holds unread data or has seen EOF (so must not be handed
        out as it is); None when not connected or its parser is not the one known here."""
        reader = self._hiredis_reader()
        stream: Any = getattr(self._parser, "_stream", None)
        buffered = getattr(stream, "_buffer", None)
        if not self.is_connected or reader is None or buffered is None:
            return None
        return bool(reader.has_data() or stream.at_eof() or buffered)


class LeanPool(BlockingConnectionPool):
    """redis-py's blocking pool with a fast path for the common case (see :func:`lean`)."""

    _waiting = 0  # callers waiting redis-py's way for a connection (see release_now)

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        if self._available_connections and not getattr(self, "_in_maintenance", False):
            conn = self._available_connections.pop()
            self._in_use_connections.add(conn)
            dirty = conn.dirty() if isinstance(conn, LeanConnection) else None
            if dirty is False:
                return conn
            try:
                if dirty:
                    # Its next reply would answer someone else's command (redis-py 8 hands
                    # such a connection out when maintenance notifications are on, the
                    # default): start afresh.
                    await conn.disconnect()
                await self.ensure_connection(conn)
            except BaseException:
                await self.release(conn)
                raise
            return conn
        # The pool is exhausted (or in maintenance): wait redis-py's way, counted so that
        # a connection given back wakes the waiter (see release_now).
        self._waiting += 1
        try:
            # Whatever redis-py's version passes (5.x names the command, 8.x nothing).
            return await super().get_connection(*args, **options)
        finally:
            self._waiting -= 1

    def release_now(self, connection: AbstractConnection) -> bool:
        """Give ``connection`` back without awaiting anything, when nothing else needs doing
        (no caller waiting to be woken, no reconnect due, no maintenance); False otherwise,
        and the caller releases it the usual way. Not awaiting, it cannot be cut in half by
        a cancellation, so it needs no shield (redis-py's pipeline shields its release,
        which costs a task per pipeline)."""
        if (self._waiting or getattr(self, "_in_maintenance", False)
                or connection not in self._in_use_connections
                or connection.should_reconnect()):
            return False
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)
        return True

    async def release(self, connection: AbstractConnection) -> None:
        if not self.release_now(connection):
            await super().release(connection)


class LeanPipeline(Pipeline):
    """redis-py's pipeline, giving its connection back without a shielded task when the
    pool can take it at once (see :meth:`LeanPool.release_now`)."""

    async def reset(self) -> None:  # type: ignore[override]
        conn, pool = self.connection, self.connection_pool
        if (conn is not None and not self.watching and isinstance(pool, LeanPool)
                and pool.release_now(conn)):
            self.connection = None
            self.command_stack = []
            self.scripts = set()
            self.explicit_transaction = False
            return
        await super().reset()


class LeanRedis(Redis):
    """The client whose pipelines are :class:`LeanPipeline`."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return LeanPipeline(self.connection_pool, self.response_callbacks, transaction,
                            shard_hint)


def _internals_known() -> bool:
    """The lean paths touch redis-py's private parts (the pool's lists, the parser's reader);
    only on a redis-py whose parts they were written against (8.x). On the lowest version
    pyproject.toml allows, 5.0.8, the client is redis-py's own."""
    return (all(hasattr(BlockingConnectionPool, name)
                for name in ("ensure_connection", "get_available_connection"))
            and hasattr(AbstractConnection, "should_reconnect"))


def lean(pool: ConnectionPool) -> ConnectionPool:
    """Give ``pool``'s connections the lean paths, whatever class the URL or Sentinel chose
    (TCP, TLS, Unix socket, Sentinel-managed). Connections are made on first use, so this
    holds for all of them. Returns ``pool``."""
    base = pool.connection_class
    if KNOWN and not issubclass(base, LeanConnection):
        # After ``base`` in the method order: a class that wraps a method (Sentinel's
        # connection turns a READONLY reply from a demoted primary into a ConnectionError,
        # so the call is retried on the new one) must still see every reply.
        pool.connection_class = type(f"{base.__name__}WithLeanPath", (base, LeanConnection), {})
    return pool


KNOWN = _internals_known()
POOL_BASE: type[BlockingConnectionPool] = LeanPool if KNOWN else BlockingConnectionPool
CLIENT: type[Redis] = LeanRedis if KNOWN else Redis
