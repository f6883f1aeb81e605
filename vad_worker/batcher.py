"""One model call for every session with audio waiting: cross-session batching."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import structlog
from prometheus_client import Histogram

from vad_worker.engine import VadEngine
from vad_worker.events import VadEvent
from vad_worker.session import VadSession

log = structlog.get_logger(__name__)

BATCH_SESSIONS = Histogram("xrx_vad_batch_sessions", "Sessions per VAD batch",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_SECONDS = Histogram("xrx_vad_batch_seconds", "Time of one VAD batch (model included)")


class VadBatcher:
    """While one batch runs in the inference thread, audio for the next one accumulates,
    so batches widen by themselves as load grows."""

    def __init__(self, engine: VadEngine) -> None:
        self.engine = engine
        self._ready: dict[str, VadSession] = {}
        self._wake = asyncio.Event()
        # One thread: the model is not shared between concurrent calls, and inference never
        # runs on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad-infer")
        self._task = asyncio.create_task(self._run())

    def submit(self, session: VadSession) -> None:
        self._ready[session.sid] = session
        self._wake.set()

    async def aclose(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._ready = list(self._ready.values()), {}
            work = [(s, *s.take_pending()) for s in batch if not s.closed]
            frames = [(s.state, pcm) for s, _, pcm in work if pcm]
            if not frames:
                continue
            BATCH_SESSIONS.observe(len(frames))
            with BATCH_SECONDS.time():
                try:
                    events = await loop.run_in_executor(self._pool, self.engine.process, frames)
                except Exception:
                    log.exception("vad inference failed; batch skipped")
                    continue
            by_session: dict[str, list[VadEvent]] = {}
            for event in events:
                by_session.setdefault(event.session_id, []).append(event)
            for session, ids, _ in work:
                try:
                    await session.publish(by_session.get(session.sid, []), ids)
                except Exception:
                    log.exception("publishing vad events failed", session_id=session.sid)
