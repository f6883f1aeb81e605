"""One client connection: at most one synthesis in flight, cancellable at any await."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from starlette.websockets import WebSocket

from services.cloud import CLOSE_PROVIDER_FAILED, ProviderError
from services.tts.audio import duration_s, iter_chunks
from services.tts.cache import AudioCache, CacheKey
from services.tts.messages import DONE, Synthesize, parse_command
from services.tts.protocols import Synthesizer

log = structlog.get_logger(__name__)


class ClientGone(Exception):
    """Sending failed: the client has disconnected."""


class TtsSession:
    def __init__(self, ws: WebSocket, synthesizer: Synthesizer, cache: AudioCache,
                 chunk_bytes: int) -> None:
        self._ws = ws
        self._synthesizer = synthesizer
        self._cache = cache
        self._chunk_bytes = chunk_bytes
        self._job: asyncio.Task[None] | None = None

    async def handle_text(self, raw: str) -> None:
        try:
            command = parse_command(raw)
        except ValueError as err:
            log.warning("tts message ignored", reason=str(err), message=raw[:200])
            return
        # Both commands end the job in flight; only synthesize starts another.
        await self.cancel()
        if isinstance(command, Synthesize):
            self._job = asyncio.create_task(self._synthesize(command.text))

    async def cancel(self) -> None:
        """Stop the job in flight; once this returns it will send nothing more.

        Task cancellation interrupts whichever await the job is at (waiting for a sentence,
        or sending a chunk), so the stop is immediate; the sentence being rendered on the
        synthesis thread finishes there and is thrown away.
        """
        job, self._job = self._job, None
        if job is None or job.done():
            return
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        log.info("tts synthesis cancelled")

    async def _synthesize(self, text: str) -> None:
        synthesizer = self._synthesizer
        key = CacheKey(synthesizer.provider, synthesizer.voice, synthesizer.sample_rate, text)
        progress = _Progress()
        cached: bytes | None = None
        try:
            cached = await self._cache.get(key)
            if cached is not None:
                await self._send_audio(cached, progress)
            else:
                pcm = await self._stream_fresh(text, progress)
                # Reached only when every sentence was sent: a cancel raises out of the
                # stream above, so truncated audio never gets here.
                if pcm:
                    await self._cache.put(key, pcm)
        except ClientGone:
            log.info("tts client gone mid-synthesis")
            return
        except ProviderError as err:
            # A cloud provider refused (key, quota) or failed: the protocol has no error frame,
            # so the client learns it from a close with the reason, tells the user, and
            # connects afresh for the next reply.
            log.warning("tts provider failed", error=str(err), status=err.status)
            with contextlib.suppress(Exception):
                await self._ws.close(code=CLOSE_PROVIDER_FAILED, reason=err.close_reason())
            return
        except Exception:
            # No error frame exists; "done" still goes out so the orchestrator stops waiting.
            log.exception("tts synthesis failed", chars=len(text))
        try:
            await self._ws.send_text(DONE)
        except Exception:
            log.info("tts client gone before done")
            return
        log.info("tts synthesis done", chars=len(text), cached=cached is not None,
                 audio_s=round(duration_s(progress.audio_bytes, synthesizer.sample_rate), 3),
                 elapsed_s=round(progress.elapsed_s(), 3),
                 first_audio_s=progress.first_audio_s)

    async def _stream_fresh(self, text: str, progress: _Progress) -> bytes:
        blocks: list[bytes] = []
        # aclosing: a cancel raised while sending must still close the generator.
        async with contextlib.aclosing(self._synthesizer.synthesize(text)) as sentences:
            async for pcm in sentences:
                blocks.append(pcm)
                await self._send_audio(pcm, progress)
        return b"".join(blocks)

    async def _send_audio(self, pcm: bytes, progress: _Progress) -> None:
        if progress.first_audio_s is None and pcm:
            progress.first_audio_s = round(progress.elapsed_s(), 3)
        for chunk in iter_chunks(pcm, self._chunk_bytes):
            try:
                await self._ws.send_bytes(chunk)
            except Exception as err:
                # Starlette and uvicorn raise several types for a closed socket.
                raise ClientGone from err
            progress.audio_bytes += len(chunk)


class _Progress:
    """Timing of one synthesis, for the log line that ends it."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_audio_s: float | None = None
        self.audio_bytes = 0

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
