"""Provider registry: ``TTS_PROVIDER`` name to a loaded, warmed :class:`Synthesizer`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from services.tts.protocols import Synthesizer
from shared.config import Settings

DEFAULT_THREADS = 1


@dataclass(frozen=True)
class TtsOptions:
    """Everything that decides how the voice is built; hashable so loads can be shared."""

    provider: str
    sample_rate: int
    threads: int = DEFAULT_THREADS
    deterministic: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TtsOptions:
        return cls(provider=settings.TTS_PROVIDER, sample_rate=settings.TTS_SAMPLE_RATE,
                   threads=settings.TTS_THREADS, deterministic=settings.TTS_DETERMINISTIC)


def _piper(options: TtsOptions) -> Synthesizer:
    # Imported here so that choosing another provider never pays for ONNX Runtime.
    from services.tts.piper_provider import PiperSynthesizer, load_piper_voice

    synthesizer = PiperSynthesizer(load_piper_voice(options.threads),
                                   sample_rate=options.sample_rate,
                                   deterministic=options.deterministic)
    synthesizer.warm_up()
    return synthesizer


SynthesizerFactory = Callable[[TtsOptions], Synthesizer]

PROVIDERS: dict[str, SynthesizerFactory] = {"piper": _piper}


def provider_factory(name: str) -> SynthesizerFactory:
    """The factory for ``name``; a ValueError naming the known providers otherwise."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown TTS_PROVIDER {name!r}; known providers: {known}") from None


def load_synthesizer(settings: Settings) -> Synthesizer:
    """Load and warm the configured synthesizer, once per process for the same options.

    Blocking (under a second): call it at start-up or in a thread.
    """
    return _load(TtsOptions.from_settings(settings))


@lru_cache(maxsize=4)
def _load(options: TtsOptions) -> Synthesizer:
    return provider_factory(options.provider)(options)
