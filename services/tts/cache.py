"""Synthesized audio cache: an in-memory LRU in front of an optional directory of PCM files.

Agents repeat themselves ("One moment please...", greetings, confirmations), and a cached
reply starts playing at once instead of after the first sentence is synthesized.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CacheKey:
    provider: str
    voice: str
    sample_rate: int
    text: str

    def digest(self) -> str:
        raw = json.dumps([self.provider, self.voice, self.sample_rate, self.text])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def filename(self) -> str:
        return f"{self.digest()}.s16le"


class AudioCache:
    """Complete syntheses only: callers must never store audio cut short by a cancel.

    Used from the event loop only; disk access runs in threads. Disk problems are logged and
    otherwise ignored, since the cache only saves time.
    """

    def __init__(self, directory: Path | None = None,
                 max_memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.directory = directory
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._memory_bytes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, key: CacheKey) -> bytes | None:
        pcm = self._memory.get(key)
        if pcm is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return pcm
        if self.directory is not None:
            pcm = await asyncio.to_thread(self._read, self.directory / key.filename())
            if pcm is not None:
                self._remember(key, pcm)
                self.hits += 1
                return pcm
        self.misses += 1
        return None

    async def put(self, key: CacheKey, pcm: bytes) -> None:
        self._remember(key, pcm)
        if self.directory is not None:
            await asyncio.to_thread(self._write, self.directory / key.filename(), pcm)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored anywhere (blocking on disk; for tests and tools)."""
        if not isinstance(key, CacheKey):
            return False
        return key in self._memory or (self.directory is not None
                                       and (self.directory / key.filename()).is_file())

    def _remember(self, key: CacheKey, pcm: bytes) -> None:
        if len(pcm) > self.max_memory_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old)
        self._memory[key] = pcm
        self._memory_bytes += len(pcm)
        while self._memory_bytes > self.max_memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_bytes -= len(evicted)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("tts cache read failed", path=str(path), error=str(err))
            return None

    @staticmethod
    def _write(path: Path, pcm: bytes) -> None:
        # Write-then-rename: a reader (another process sharing the directory) never sees a
        # half-written file.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(pcm)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as err:
            log.warning("tts cache write failed", path=str(path), error=str(err))
