"""shared.runtime: what ``xrx`` changes in the Python runtime before a service starts."""

from __future__ import annotations

import asyncio
import gc
import sys
from asyncio import events, mixins
from collections.abc import Iterator

import pytest

from shared import runtime


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Put back what tune() changes, so the rest of the test session runs on stock settings.
    monkeypatch.setattr(mixins._LoopBoundMixin, "_get_loop",
                        mixins._LoopBoundMixin._get_loop)  # type: ignore[attr-defined]
    threshold = gc.get_threshold()
    runtime.tune()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _lookups_for(waits: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """How often the running loop is looked up while a consumer waits ``waits`` times on an
    empty queue and is woken each time."""
    lookups = 0
    lookup = events._get_running_loop

    def counting() -> asyncio.AbstractEventLoop | None:
        nonlocal lookups
        lookups += 1
        return lookup()

    monkeypatch.setattr(events, "_get_running_loop", counting)

    async def main() -> list[int]:
        q: asyncio.Queue[int] = asyncio.Queue()
        got = []

        async def consumer() -> None:
            for _ in range(waits):
                got.append(await q.get())

        task = asyncio.create_task(consumer())
        for i in range(waits):
            await asyncio.sleep(0)  # the consumer is waiting on the empty queue
            q.put_nowait(i)
        await task
        return got

    # A loop of its own, never made the thread's current one: asyncio.run would leave the
    # thread without one, and the session-scoped loop of the async tests after this with it.
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == list(range(waits))
    finally:
        loop.close()
    monkeypatch.setattr(events, "_get_running_loop", lookup)
    return lookups


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 has no getpid in the loop lookup")
def test_a_bound_queue_stops_asking_for_the_running_loop(
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    stock = _lookups_for(200, monkeypatch) - _lookups_for(20, monkeypatch)
    assert stock >= 180  # one lookup (one getpid) per wait, before tuning
    request.getfixturevalue("tuned")
    assert _lookups_for(200, monkeypatch) == _lookups_for(20, monkeypatch)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(tuned: None) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == runtime.YOUNG_COLLECTION_EVERY
