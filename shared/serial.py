"""Items of one session handled one at a time, in order, with the current one cancellable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from shared.leases import LeaseLost

log = structlog.get_logger(__name__)

T = TypeVar("T")

_STOP = object()


class SerialRunner(Generic[T]):
    """A queue drained by one task; each item runs as a task of its own, so cancelling the
    item in flight never reaches the loop itself (cancelling a task that is inside a
    library's await, redis-py's for one, is not reliably delivered)."""

    def __init__(self, work: Callable[[T], Awaitable[None]],
                 done: Callable[[T, bool], Awaitable[None]], *, session_id: str = "") -> None:
        """``work(item)`` handles an item; ``done(item, cancelled)`` runs after it, always."""
        self._work, self._done = work, done
        self._log = log.bind(session_id=session_id) if session_id else log
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.current: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop = asyncio.create_task(self._run())

    def put(self, item: T) -> None:
        self._queue.put_nowait(item)

    def pending(self) -> int:
        return self._queue.qsize()

    def take(self, pred: Callable[[T], bool] = lambda _: True) -> list[T]:
        """Remove and return the queued items matching ``pred``, keeping the others in order."""
        taken: list[T] = []
        kept: list[object] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _STOP and pred(item):  # type: ignore[arg-type]
                taken.append(item)  # type: ignore[arg-type]
            else:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
        return taken

    def cancel_current(self) -> None:
        if self.current is not None and not self.current.done():
            self.current.cancel()

    async def wait_current(self, timeout: float) -> None:
        if self.current is not None and not self.current.done():
            await asyncio.wait({self.current}, timeout=timeout)

    async def stop(self) -> None:
        """Cancel the item in flight and end the loop; items still queued are not run and
        stay for ``take`` (to acknowledge them, or leave them to the next owner)."""
        self._stopping = True
        self._queue.put_nowait(_STOP)  # wakes the loop if it is waiting for work
        self.cancel_current()
        try:
            await asyncio.wait_for(asyncio.shield(self._loop), timeout=10)
        except TimeoutError:
            self._loop.cancel()

    async def _run(self) -> None:
        while not self._stopping and (item := await self._queue.get()) is not _STOP:
            self.current = asyncio.create_task(self._work(item))  # type: ignore[arg-type]
            cancelled = False
            try:
                await asyncio.shield(self.current)
            except asyncio.CancelledError:
                if self._loop.cancelling():
                    raise
                cancelled = True
            except LeaseLost as err:
                self._log.info("session work stopped: partition moved", reason=str(err))
            except Exception:
                # One failed item (Redis gone mid-turn, say) must not stop the session.
                self._log.exception("session work failed")
            finally:
                self.current = None
            try:
                await self._done(item, cancelled)  # type: ignore[arg-type]
            except Exception:
                # Unacknowledged, the item stays pending and is handled again on failover.
                self._log.exception("could not finish session work")
