"""Provider registry: ``STT_PROVIDER`` name to a loaded, warmed :class:`Transcriber`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from services.stt.protocols import StreamingTranscriber, Transcriber
from shared.config import STT_PROVIDER_KEYS, Settings

DEFAULT_CPU_THREADS = 1


@dataclass(frozen=True)
class SttOptions:
    """Everything that decides which model gets loaded; hashable so loads can be shared."""

    provider: str
    model: str
    cpu_threads: int = DEFAULT_CPU_THREADS
    beam_size: int | None = None  # None: the provider's own default
    window_s: int = 30  # shortest encoder window (Whisper's own: 30 s)
    # Cloud providers only.
    api_key: str = ""
    base_url: str = ""
    endpointing_ms: int = 300
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SttOptions:
        provider = settings.STT_PROVIDER
        key_name = STT_PROVIDER_KEYS.get(provider, "")
        base_url = {"deepgram": settings.DEEPGRAM_BASE_URL, "groq": settings.GROQ_BASE_URL,
                    "openai": settings.OPENAI_BASE_URL}.get(provider, "")
        return cls(provider=provider, model=settings.stt_model,
                   cpu_threads=settings.STT_CPU_THREADS, beam_size=settings.STT_BEAM_SIZE,
                   api_key=getattr(settings, key_name) if key_name else "",
                   base_url=base_url, endpointing_ms=settings.DEEPGRAM_ENDPOINTING,
                   timeout_s=settings.PROVIDER_TIMEOUT_S, window_s=settings.STT_WINDOW_S)


def _faster_whisper(options: SttOptions) -> Transcriber:
    # Imported here so that choosing another provider never pays for PyAV and CTranslate2.
    from services.stt.whisper_provider import (
        DEFAULT_BEAM_SIZE,
        FasterWhisperTranscriber,
        resolve_model_dir,
    )

    return FasterWhisperTranscriber.load(resolve_model_dir(options.model),
                                         cpu_threads=options.cpu_threads,
                                         beam_size=options.beam_size or DEFAULT_BEAM_SIZE,
                                         window_s=options.window_s)


def _deepgram(options: SttOptions) -> StreamingTranscriber:
    from services.stt.deepgram_provider import DeepgramTranscriber

    return DeepgramTranscriber(api_key=options.api_key, base_url=options.base_url,
                               model=options.model, endpointing_ms=options.endpointing_ms,
                               timeout_s=options.timeout_s)


def _openai_compatible(options: SttOptions) -> Transcriber:
    from services.stt.openai_provider import OpenAiTranscriber

    return OpenAiTranscriber(provider=options.provider, base_url=options.base_url,
                             api_key=options.api_key, model=options.model,
                             timeout_s=options.timeout_s)


AnyTranscriber = Transcriber | StreamingTranscriber
TranscriberFactory = Callable[[SttOptions], AnyTranscriber]

PROVIDERS: dict[str, TranscriberFactory] = {
    "faster_whisper": _faster_whisper,
    "deepgram": _deepgram,
    "groq": _openai_compatible,
    "openai": _openai_compatible,
}


def provider_factory(name: str) -> TranscriberFactory:
    """The factory for ``name``; a ValueError naming the known providers otherwise."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown STT_PROVIDER {name!r}; known providers: {known}") from None


def check_settings(settings: Settings) -> None:
    """Refuse at once what would only fail once loading starts: an unknown provider, a cloud
    provider without its key, a local model that is not on disk (ValueError, the reason)."""
    factory = provider_factory(settings.STT_PROVIDER)
    missing = settings.missing_provider_key("stt")
    if missing:
        raise ValueError(missing)
    if factory is _faster_whisper:
        from services.stt.whisper_provider import resolve_model_dir

        resolve_model_dir(settings.stt_model)


def load_transcriber(settings: Settings) -> AnyTranscriber:
    """Load and warm the configured transcriber, once per process for the same options.

    Blocking (about a second): call it at start-up or in a thread.
    """
    return _load(SttOptions.from_settings(settings))


@lru_cache(maxsize=4)
def _load(options: SttOptions) -> AnyTranscriber:
    return provider_factory(options.provider)(options)
