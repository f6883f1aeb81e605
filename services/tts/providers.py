"""Provider registry: ``TTS_PROVIDER`` name to a loaded, warmed :class:`Synthesizer`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from services.tts.protocols import Synthesizer
from shared.config import TTS_PROVIDER_KEYS, Settings

DEFAULT_THREADS = 1


@dataclass(frozen=True)
class TtsOptions:
    """Everything that decides how the voice is built; hashable so loads can be shared."""

    provider: str
    sample_rate: int
    threads: int = DEFAULT_THREADS
    deterministic: bool = False
    # Cloud providers only: key, endpoint and voice, as each provider names them.
    api_key: str = ""
    base_url: str = ""
    model: str = ""
    voice: str = ""
    version: str = ""
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> TtsOptions:
        s = settings
        provider = s.TTS_PROVIDER
        key_name = TTS_PROVIDER_KEYS.get(provider, "")
        base_url, model, voice = {
            "elevenlabs": (s.ELEVENLABS_BASE_URL, s.ELEVENLABS_MODEL_ID, s.ELEVENLABS_VOICE_ID),
            "openai": (s.OPENAI_BASE_URL, s.OPENAI_TTS_MODEL, s.OPENAI_TTS_VOICE),
            "deepgram": (s.DEEPGRAM_BASE_URL, s.DEEPGRAM_TTS_MODEL, ""),
            "cartesia": (s.CARTESIA_BASE_URL, s.CARTESIA_MODEL_ID, s.CARTESIA_VOICE_ID),
        }.get(provider, ("", "", ""))
        return cls(provider=provider, sample_rate=s.TTS_SAMPLE_RATE, threads=s.TTS_THREADS,
                   deterministic=s.TTS_DETERMINISTIC,
                   api_key=getattr(s, key_name) if key_name else "", base_url=base_url,
                   model=model, voice=voice, version=s.CARTESIA_VERSION,
                   timeout_s=s.PROVIDER_TIMEOUT_S)


def _piper(options: TtsOptions) -> Synthesizer:
    # Imported here so that choosing another provider never pays for ONNX Runtime.
    from services.tts.piper_provider import PiperSynthesizer, load_piper_voice

    synthesizer = PiperSynthesizer(load_piper_voice(options.threads),
                                   sample_rate=options.sample_rate,
                                   deterministic=options.deterministic)
    synthesizer.warm_up()
    return synthesizer


# Cloud adapters, each imported only when chosen. They connect per synthesis, so there is
# nothing to warm up.
def _elevenlabs(o: TtsOptions) -> Synthesizer:
    from services.tts.elevenlabs_provider import ElevenLabsSynthesizer

    return ElevenLabsSynthesizer(api_key=o.api_key, base_url=o.base_url, voice_id=o.voice,
                                 model_id=o.model, sample_rate=o.sample_rate,
                                 timeout_s=o.timeout_s)


def _openai(o: TtsOptions) -> Synthesizer:
    from services.tts.openai_provider import OpenAiSynthesizer

    return OpenAiSynthesizer(api_key=o.api_key, base_url=o.base_url, model=o.model,
                             voice=o.voice, sample_rate=o.sample_rate, timeout_s=o.timeout_s)


def _deepgram(o: TtsOptions) -> Synthesizer:
    from services.tts.deepgram_provider import DeepgramSynthesizer

    return DeepgramSynthesizer(api_key=o.api_key, base_url=o.base_url, model=o.model,
                               sample_rate=o.sample_rate, timeout_s=o.timeout_s)


def _cartesia(o: TtsOptions) -> Synthesizer:
    from services.tts.cartesia_provider import CartesiaSynthesizer

    return CartesiaSynthesizer(api_key=o.api_key, base_url=o.base_url, version=o.version,
                               model_id=o.model, voice_id=o.voice, sample_rate=o.sample_rate,
                               timeout_s=o.timeout_s)


SynthesizerFactory = Callable[[TtsOptions], Synthesizer]

PROVIDERS: dict[str, SynthesizerFactory] = {
    "piper": _piper,
    "elevenlabs": _elevenlabs,
    "openai": _openai,
    "deepgram": _deepgram,
    "cartesia": _cartesia,
}


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
