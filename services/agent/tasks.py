"""Running agent turns as cancellable tasks that feed a server-sent-event stream.

Each turn runs in its own asyncio task writing into a queue, and the HTTP response reads the
queue. That split is what lets the cancel endpoint, which runs in a different request, stop
the turn: it cancels the task (so sleeps, LLM calls and the like really stop) and ends the
stream. A client disconnect does the same through the response's clean-up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.protocols import TASK_ID_HEADER, AgentField, sse_event

log = structlog.get_logger(__name__)

Event = dict[str, Any]


@dataclass
class _Turn:
    task: asyncio.Task[None]
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    cancelled: bool = False


class TaskRegistry:
    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._turns

    def __len__(self) -> int:
        return len(self._turns)

    def task(self, task_id: str) -> asyncio.Task[None] | None:
        turn = self._turns.get(task_id)
        return turn.task if turn else None

    def start(self, events: AsyncIterator[Event]) -> tuple[str, AsyncIterator[bytes]]:
        """Start producing ``events``; return the task id and the SSE body to send."""
        task_id = str(uuid.uuid4())
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for event in events:
                    queue.put_nowait(sse_event(event))
            except Exception:
                log.exception("agent_turn_failed", task_id=task_id)
                queue.put_nowait(sse_event({AgentField.ERROR: "internal error"}))

        task = asyncio.create_task(produce(), name=f"agent-turn-{task_id}")
        # A done-callback rather than `finally`: a task cancelled before its first step never
        # runs its body, and the stream must still end.
        task.add_done_callback(lambda _: queue.put_nowait(None))
        turn = _Turn(task, queue)
        self._turns[task_id] = turn
        return task_id, self._body(task_id, turn)

    async def _body(self, task_id: str, turn: _Turn) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await turn.queue.get()
                if chunk is None or turn.cancelled:
                    return
                yield chunk
        finally:
            self.finish(task_id)

    def cancel(self, task_id: str) -> bool:
        turn = self._turns.get(task_id)
        if turn is None:
            return False
        turn.cancelled = True
        turn.task.cancel()
        # Wake the reader even if the task already finished and its events are still queued.
        turn.queue.put_nowait(None)
        log.info("agent_turn_cancelled", task_id=task_id)
        return True

    def finish(self, task_id: str) -> None:
        """Forget a turn whose stream ended, stopping its task if it is still working."""
        turn = self._turns.pop(task_id, None)
        # Once only: a second cancel would land in the turn's clean-up (closing the LLM
        # request) and leave the upstream model generating for nobody.
        if turn is not None and not turn.task.done() and not turn.cancelled:
            log.info("agent_turn_abandoned", task_id=task_id)
            turn.cancelled = True
            turn.task.cancel()

    async def aclose(self) -> None:
        tasks = [t.task for t in self._turns.values()]
        for task_id in list(self._turns):
            self.finish(task_id)
        await asyncio.gather(*tasks, return_exceptions=True)


class TurnStreamResponse(StreamingResponse):
    """An SSE response that runs ``on_close`` however the response ends.

    Starlette never starts the body iterator if the client is gone before the first chunk,
    so the iterator's own ``finally`` is not enough to stop the turn.
    """

    def __init__(
        self, content: AsyncIterator[bytes], task_id: str, on_close: Callable[[str], None]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={TASK_ID_HEADER: task_id, "Cache-Control": "no-cache",
                     "X-Accel-Buffering": "no"},
        )
        self._task_id = task_id
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close(self._task_id)
