"""Per-session work in order: a failure or a cancel never stops the items after it, and
stopping leaves queued items for their owner to deal with."""

from __future__ import annotations

import asyncio

from shared.serial import SerialRunner


async def test_items_run_in_order_and_a_failure_does_not_stop_the_rest() -> None:
    ran: list[int] = []
    finished: list[tuple[int, bool]] = []
    last = asyncio.Event()

    async def work(item: int) -> None:
        if item == 2:
            raise ConnectionError("redis went away")
        ran.append(item)

    async def done(item: int, cancelled: bool) -> None:
        finished.append((item, cancelled))
        if item == 4:
            last.set()

    runner: SerialRunner[int] = SerialRunner(work, done)
    for i in range(1, 5):
        runner.put(i)
    await asyncio.wait_for(last.wait(), 5)
    await runner.stop()
    assert ran == [1, 3, 4]
    assert finished == [(1, False), (2, False), (3, False), (4, False)]


async def test_cancelling_the_current_item_moves_on_and_reports_it() -> None:
    started = asyncio.Event()
    finished: list[tuple[str, bool]] = []
    last = asyncio.Event()

    async def work(item: str) -> None:
        if item == "long":
            started.set()
            await asyncio.sleep(60)

    async def done(item: str, cancelled: bool) -> None:
        finished.append((item, cancelled))
        if item == "next":
            last.set()

    runner: SerialRunner[str] = SerialRunner(work, done)
    runner.put("long")
    runner.put("next")
    await started.wait()
    runner.cancel_current()
    await asyncio.wait_for(last.wait(), 5)
    await runner.stop()
    assert finished == [("long", True), ("next", False)]


async def test_stop_cancels_the_current_item_and_leaves_the_queue_untouched() -> None:
    started = asyncio.Event()
    finished: list[tuple[int, bool]] = []

    async def work(item: int) -> None:
        started.set()
        await asyncio.sleep(60)

    async def done(item: int, cancelled: bool) -> None:
        finished.append((item, cancelled))

    runner: SerialRunner[int] = SerialRunner(work, done)
    for i in range(4):
        runner.put(i)
    await started.wait()
    assert runner.take(lambda i: i == 2) == [2]  # a cancel can pull queued items out
    await runner.stop()
    assert finished == [(0, True)]  # nothing queued ran after the stop
    assert runner.take() == [1, 3]
