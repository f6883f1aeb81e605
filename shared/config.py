"""Settings read from the environment, with the xRx seed's names and the original's defaults.

Every process calls :func:`load_settings` once at start-up; a bad value stops it with a
message naming the variable, rather than failing later in the middle of a conversation.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.pacing import Pacing

DEFAULT_API_KEY = "123456"

# Providers that take a continuous audio stream and return final transcripts themselves, so
# the VAD forwards raw audio instead of segmenting it (the original's behaviour for deepgram).
STREAMING_STT_PROVIDERS = frozenset({"deepgram"})
# The API key each cloud provider needs, by its own environment name (services/*/providers.py
# hold the adapters; a missing key stops the service that would use it at start-up).
STT_PROVIDER_KEYS = {"faster_whisper": "", "deepgram": "DEEPGRAM_API_KEY",
                     "groq": "GROQ_API_KEY", "openai": "OPENAI_API_KEY"}
TTS_PROVIDER_KEYS = {"piper": "", "elevenlabs": "ELEVENLABS_API_KEY", "openai": "OPENAI_API_KEY",
                     "deepgram": "DEEPGRAM_API_KEY", "cartesia": "CARTESIA_API_KEY"}
# STT_MODEL when unset: each provider's own default model.
DEFAULT_STT_MODELS = {"faster_whisper": "tiny.en", "deepgram": "nova-3",
                      "groq": "whisper-large-v3-turbo", "openai": "whisper-1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    # --- client-facing -----------------------------------------------------------------
    API_KEY: str = Field(DEFAULT_API_KEY, min_length=1)
    GATEWAY_HOST: str = "0.0.0.0"
    GATEWAY_PORT: int = Field(8000, ge=0, le=65535)
    INITIAL_RESPONSE: str = ""
    MAX_FRAME_BYTES: int = Field(1_048_576, ge=1024)
    # Longest text or action frame: more than a person types or pastes (16 KiB is ~2,500
    # words); longer ones get an error and the connection stays open.
    MAX_TEXT_BYTES: int = Field(16_384, ge=256)
    SESSION_TTL_S: int = Field(60, ge=5)

    # --- Redis -------------------------------------------------------------------------
    REDIS_URL: str = ""
    REDIS_HOST: str = "localhost"
    REDIS_PORT: int = Field(6379, ge=1, le=65535)
    # Sentinel mode (set REDIS_SENTINELS): clients ask the sentinels where the primary is and
    # follow it across failovers; REDIS_URL/REDIS_HOST are then ignored (the db stays 0).
    REDIS_SENTINELS: str = ""  # comma-separated host:port
    REDIS_SENTINEL_MASTER: str = Field("xrx", min_length=1)
    # For the data nodes and the sentinels alike (a Secret in Kubernetes, never the ConfigMap);
    # a password inside REDIS_URL wins in plain mode.
    REDIS_PASSWORD: str = ""
    # Connections per process (0: 200 for the gateway, 50 for a worker); a command that finds
    # them all busy waits up to REDIS_POOL_TIMEOUT_S for one instead of failing at once.
    REDIS_MAX_CONNECTIONS: int = Field(0, ge=0)
    REDIS_POOL_TIMEOUT_S: float = Field(5.0, gt=0)
    # Sentinel mode only: writes that must survive the primary's death (turn numbers and
    # fences, the client's text and actions) wait up to this long for REDIS_WAIT_REPLICAS
    # replicas to acknowledge them (Redis WAIT). 0 replicas: never wait.
    REDIS_WAIT_REPLICAS: int = Field(1, ge=0)
    REDIS_WAIT_MS: int = Field(100, ge=1)

    # --- agent -------------------------------------------------------------------------
    AGENT_HOST: str = "localhost"
    AGENT_PORT: int = Field(8003, ge=1, le=65535)
    AGENT_PATH: str = "/run-reasoning-agent"
    AGENT_CANCEL_PATH: str = "/cancel-reasoning-agent"
    GUARDRAILS_AGENT_HOST: str = ""
    GUARDRAILS_AGENT_PORT: int = Field(8004, ge=1, le=65535)
    AGENT_WAIT_MS: int = Field(100, ge=0)
    AGENT_TIMEOUT_S: float = Field(60.0, gt=0)
    AGENT_SLOW_NOTICE_MS: int = Field(5000, ge=0)
    MAX_AGENT_MESSAGES: int = Field(20, ge=1)
    LLM_BASE_URL: str = ""
    LLM_MODEL: str = "llama3.2"
    LLM_API_KEY: str = ""
    GUARDRAILS_DENY: str = ""

    # --- audio / STT -------------------------------------------------------------------
    SAMPLE_RATE: int = Field(16000)
    STT_WAIT_MS: int = Field(250, ge=32)
    STT_HOST: str = "localhost"
    STT_PORT: int = Field(8001, ge=1, le=65535)
    STT_PATH: str = "/api/v1/ws"
    STT_PROVIDER: str = "faster_whisper"
    STT_MODEL: str = ""  # empty: the provider's default (DEFAULT_STT_MODELS)
    STT_TIMEOUT_S: float = Field(30.0, gt=0)
    STT_CPU_THREADS: int = Field(1, ge=1)
    STT_BEAM_SIZE: int = Field(5, ge=1)
    # Whisper's encoder window for utterances shorter than this (30 = its full window).
    STT_WINDOW_S: int = Field(10, ge=1, le=30)
    # Transcribe when the silence starts, use it when STT_WAIT_MS confirms the end.
    STT_SPECULATIVE: bool = True
    VAD_THRESHOLD: float = Field(0.5, gt=0, lt=1)
    VAD_MIN_SPEECH_MS: int = Field(250, ge=0)
    VAD_PREROLL_MS: int = Field(300, ge=0)
    VAD_MAX_UTTERANCE_MS: int = Field(15000, ge=1000)
    BARGE_IN_MIN_MS: int = Field(250, ge=0)

    # --- TTS ---------------------------------------------------------------------------
    TTS_HOST: str = "localhost"
    TTS_PORT: int = Field(8002, ge=1, le=65535)
    TTS_PATH: str = "/api/v1/ws"
    TTS_PROVIDER: str = "piper"
    TTS_SAMPLE_RATE: int = Field(16000, ge=8000, le=48000)
    TTS_CHUNK_MS: int = Field(100, ge=10, le=1000)
    TTS_CACHE_DIR: str = ""
    TTS_THREADS: int = Field(1, ge=1)
    # Sampling noise off: the same text gives the same audio (test fixtures, caching).
    TTS_DETERMINISTIC: bool = False

    # --- cloud providers: keys (from a Secret), base URLs (overridable: proxies, tests),
    # voices and models, each under the provider's own name ----------------------------
    PROVIDER_TIMEOUT_S: float = Field(10.0, gt=0)
    DEEPGRAM_API_KEY: str = ""
    DEEPGRAM_BASE_URL: str = "https://api.deepgram.com"
    DEEPGRAM_ENDPOINTING: int = Field(300, ge=10)
    DEEPGRAM_TTS_MODEL: str = "aura-2-thalia-en"
    GROQ_API_KEY: str = ""
    GROQ_BASE_URL: str = "https://api.groq.com/openai/v1"
    OPENAI_API_KEY: str = ""
    OPENAI_BASE_URL: str = "https://api.openai.com/v1"
    OPENAI_TTS_MODEL: str = "gpt-4o-mini-tts"
    OPENAI_TTS_VOICE: str = "alloy"
    ELEVENLABS_API_KEY: str = ""
    ELEVENLABS_BASE_URL: str = "https://api.elevenlabs.io"
    ELEVENLABS_VOICE_ID: str = "21m00Tcm4TlvDq8ikWAM"
    ELEVENLABS_MODEL_ID: str = "eleven_flash_v2_5"
    CARTESIA_API_KEY: str = ""
    CARTESIA_BASE_URL: str = "https://api.cartesia.ai"
    CARTESIA_VERSION: str = "2025-04-16"
    CARTESIA_MODEL_ID: str = "sonic-2"
    CARTESIA_VOICE_ID: str = "a0e99841-438c-4a64-b679-ae501e7d6091"

    # --- process -----------------------------------------------------------------------
    LOG_FORMAT: Literal["auto", "json", "console"] = "auto"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Workers' /healthz, /readyz, /metrics server; like GATEWAY_HOST, 127.0.0.1 keeps it local.
    HEALTH_HOST: str = "0.0.0.0"
    HEALTH_PORT: int = Field(-1, ge=-1, le=65535)
    WORKER_ID: str = ""
    LEASE_MS: int = Field(2000, ge=500)
    # The process's scheduling niceness (Linux: -20..19, lower runs first), for processes
    # that share a machine: below 0 (root or CAP_SYS_NICE) for the vad-worker, whose
    # batches every session's end of speech waits on (README, "Operations"). Unset: left as
    # started.
    CPU_NICE: int | None = Field(None, ge=-20, le=19)
    # Partition streams per stage; every process of a deployment must use the same number,
    # and it bounds how many replicas of one stage can share the work.
    PARTITIONS: int = Field(32, ge=1, le=1024)
    # Audio older than this when the VAD reads it is dropped (the client is told once):
    # under overload the backlog is shed instead of growing without bound.
    VAD_MAX_LAG_MS: int = Field(3000, ge=100)
    # How often the gateway writes client audio and the VAD runs a batch (shared/pacing.py):
    # AUDIO_BATCH_MS with a few sessions, AUDIO_BATCH_LOADED_MS from 64 sessions per process
    # (per write or batch) on. Equal values keep one cadence whatever the load.
    AUDIO_BATCH_MS: int = Field(40, ge=5, le=500)
    AUDIO_BATCH_LOADED_MS: int = Field(80, ge=5, le=500)

    @field_validator("SAMPLE_RATE")
    @classmethod
    def _only_16k(cls, v: int) -> int:
        if v != 16000:
            raise ValueError("only 16000 Hz input is supported (Silero VAD and Whisper use 16 kHz)")
        return v

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _level_any_case(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("AGENT_PATH", "AGENT_CANCEL_PATH", "STT_PATH", "TTS_PATH")
    @classmethod
    def _leading_slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @model_validator(mode="after")
    def _audio_batch(self) -> Settings:
        if self.AUDIO_BATCH_LOADED_MS < self.AUDIO_BATCH_MS:
            raise ValueError("AUDIO_BATCH_LOADED_MS must be at least AUDIO_BATCH_MS")
        if self.AUDIO_BATCH_LOADED_MS * 2 > self.VAD_MAX_LAG_MS:
            raise ValueError("AUDIO_BATCH_LOADED_MS must be at most half of VAD_MAX_LAG_MS "
                             "(audio waiting a batch would be shed as late)")
        return self

    @property
    def audio_pacing(self) -> Pacing:
        return Pacing.from_ms(self.AUDIO_BATCH_MS, self.AUDIO_BATCH_LOADED_MS)

    @model_validator(mode="after")
    def _redis_url(self) -> Settings:
        if self.REDIS_URL and not self.REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        _ = self.redis_sentinels  # raises on a malformed REDIS_SENTINELS
        return self

    @property
    def redis_sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when Sentinel mode is off."""
        out: list[tuple[str, int]] = []
        for item in (x.strip() for x in self.REDIS_SENTINELS.split(",")):
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"REDIS_SENTINELS: {item!r} is not host:port")
            out.append((host, int(port)))
        return out

    @property
    def redis_url(self) -> str:
        return self.REDIS_URL or f"redis://{self.REDIS_HOST}:{self.REDIS_PORT}/0"

    @property
    def agent_base_url(self) -> str:
        """Where agent calls go: through the guardrails proxy when one is configured."""
        if self.GUARDRAILS_AGENT_HOST:
            return f"http://{self.GUARDRAILS_AGENT_HOST}:{self.GUARDRAILS_AGENT_PORT}"
        return f"http://{self.AGENT_HOST}:{self.AGENT_PORT}"

    @property
    def stt_streaming(self) -> bool:
        return self.STT_PROVIDER in STREAMING_STT_PROVIDERS

    @property
    def stt_model(self) -> str:
        return self.STT_MODEL or DEFAULT_STT_MODELS.get(self.STT_PROVIDER, "")

    def missing_provider_key(self, kind: Literal["stt", "tts"]) -> str | None:
        """Why the selected STT or TTS provider cannot start for want of its key, or None.

        Checked by the service that calls the provider only: the other processes read the
        provider name too, but never hold its key.
        """
        provider = self.STT_PROVIDER if kind == "stt" else self.TTS_PROVIDER
        key = (STT_PROVIDER_KEYS if kind == "stt" else TTS_PROVIDER_KEYS).get(provider)
        if key and not getattr(self, key):
            return f"{kind.upper()}_PROVIDER={provider} needs {key} (the provider's API key)"
        return None

    @property
    def stt_url(self) -> str:
        return f"ws://{self.STT_HOST}:{self.STT_PORT}{self.STT_PATH}"

    @property
    def tts_url(self) -> str:
        return f"ws://{self.TTS_HOST}:{self.TTS_PORT}{self.TTS_PATH}"

    @property
    def guardrails_deny_list(self) -> list[str]:
        return [w.strip().lower() for w in self.GUARDRAILS_DENY.split(",") if w.strip()]


class ConfigError(SystemExit):
    """Raised with a readable message when the environment holds a bad setting."""


# Settings whose values are credentials: a start-up error names them, never shows them.
_SECRET_NAME = re.compile(r"(KEY|PASSWORD|TOKEN|SECRET)$")
# user:password@ in a URL (REDIS_URL, say).
_URL_CREDENTIALS = re.compile(r"(//)[^/@\s]*@")


def _shown(name: str, value: object) -> str:
    """What a start-up error may say about a setting's value: the value itself, unless it
    is a credential or a URL holding one. A check across settings (no name) shows nothing:
    pydantic's input there is the whole environment the settings came from."""
    if not name or _SECRET_NAME.search(name):
        return ""
    shown = _URL_CREDENTIALS.sub(r"\1***@", repr(value))
    return f" (got {shown})"


def _describe(err: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {name or 'settings'}: {e['msg']}{_shown(name, e.get('input'))}")
    return "\n".join(lines)


def config_error(message: str) -> ConfigError:
    """A start-up failure a person can act on: printed plainly, no traceback."""
    print(f"invalid configuration: {message}", file=sys.stderr)
    return ConfigError(2)


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        print(_describe(err), file=sys.stderr)
        raise ConfigError(2) from None
