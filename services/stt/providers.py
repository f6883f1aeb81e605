"""Provider registry: ``STT_PROVIDER`` name to a loaded, warmed :class:`Transcriber`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from services.stt.protocols import Transcriber
from shared.config import Settings

DEFAULT_CPU_THREADS = 1


@dataclass(frozen=True)
class SttOptions:
    """Everything that decides which model gets loaded; hashable so loads can be shared."""

    provider: str
    model: str
    cpu_threads: int = DEFAULT_CPU_THREADS
    beam_size: int | None = None  # None: the provider's own default

    @classmethod
    def from_settings(cls, settings: Settings) -> SttOptions:
        return cls(provider=settings.STT_PROVIDER, model=settings.STT_MODEL,
                   cpu_threads=settings.STT_CPU_THREADS, beam_size=settings.STT_BEAM_SIZE)


def _faster_whisper(options: SttOptions) -> Transcriber:
    # Imported here so that choosing another provider never pays for PyAV and CTranslate2.
    from services.stt.whisper_provider import (
        DEFAULT_BEAM_SIZE,
        FasterWhisperTranscriber,
        resolve_model_dir,
    )

    return FasterWhisperTranscriber.load(resolve_model_dir(options.model),
                                         cpu_threads=options.cpu_threads,
                                         beam_size=options.beam_size or DEFAULT_BEAM_SIZE)


TranscriberFactory = Callable[[SttOptions], Transcriber]

PROVIDERS: dict[str, TranscriberFactory] = {"faster_whisper": _faster_whisper}


def provider_factory(name: str) -> TranscriberFactory:
    """The factory for ``name``; a ValueError naming the known providers otherwise."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown STT_PROVIDER {name!r}; known providers: {known}") from None


def load_transcriber(settings: Settings) -> Transcriber:
    """Load and warm the configured transcriber, once per process for the same options.

    Blocking (about a second): call it at start-up or in a thread.
    """
    return _load(SttOptions.from_settings(settings))


@lru_cache(maxsize=4)
def _load(options: SttOptions) -> Transcriber:
    return provider_factory(options.provider)(options)
