"""Bad configuration stops a process at start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness import ROOT


@pytest.mark.parametrize(("env", "expected"), [
    ({"AGENT_PORT": "eighty"}, "AGENT_PORT"),
    ({"SAMPLE_RATE": "8000"}, "only 16000 Hz"),
    ({"AGENT_PATH": "run"}, "must start with '/'"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with"),
    ({"REDIS_SENTINELS": "sentinel-0:26379,sentinel-1"}, "REDIS_SENTINELS: 'sentinel-1'"),
    ({"REDIS_MAX_CONNECTIONS": "-1"}, "REDIS_MAX_CONNECTIONS"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"LOG_LEVEL": "bogus"}, "LOG_LEVEL"),
    ({"CPU_NICE": "-21"}, "CPU_NICE"),
    ({"AUDIO_BATCH_MS": "80", "AUDIO_BATCH_LOADED_MS": "40"},
     "AUDIO_BATCH_LOADED_MS must be at least AUDIO_BATCH_MS"),
    ({"AUDIO_BATCH_LOADED_MS": "400", "VAD_MAX_LAG_MS": "500"}, "at most half of VAD_MAX_LAG_MS"),
])
def test_gateway_refuses_to_start_with_a_bad_setting(env: dict[str, str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "gateway"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stt_model_not_on_disk_is_refused_before_loading() -> None:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "stt-service"], cwd=ROOT,
                          env={**os.environ, "STT_MODEL": "bogus", "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "STT_MODEL='bogus' is not available offline" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_stt_provider_is_refused_with_the_known_ones() -> None:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "stt-service"], cwd=ROOT,
                          env={**os.environ, "STT_PROVIDER": "bogus"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown STT_PROVIDER 'bogus'" in proc.stderr and "faster_whisper" in proc.stderr


@pytest.mark.parametrize(("command", "env", "expected"), [
    ("stt-service", {"STT_PROVIDER": "deepgram", "DEEPGRAM_API_KEY": ""}, "DEEPGRAM_API_KEY"),
    ("stt-service", {"STT_PROVIDER": "groq", "GROQ_API_KEY": ""}, "GROQ_API_KEY"),
    ("tts-service", {"TTS_PROVIDER": "elevenlabs", "ELEVENLABS_API_KEY": ""},
     "ELEVENLABS_API_KEY"),
    ("tts-service", {"TTS_PROVIDER": "cartesia", "CARTESIA_API_KEY": ""}, "CARTESIA_API_KEY"),
])
def test_cloud_provider_without_its_key_is_refused(command: str, env: dict[str, str],
                                                   expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "shared.cli", command], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_refused_setting_never_shows_a_credential() -> None:
    # A check across settings gets the whole environment as its input; a bad URL may hold a
    # password. The message names what is wrong, never the secrets beside it.
    env = {"API_KEY": "s3cr3t-key", "OPENAI_API_KEY": "sk-live-XYZ", "REDIS_PASSWORD": "pw123",
           "REDIS_URL": "http://user:pw456@redis:6379", "LOG_LEVEL": "debug"}
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "gateway"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "REDIS_URL must start with" in proc.stderr
    for secret in ("s3cr3t-key", "sk-live-XYZ", "pw123", "pw456"):
        assert secret not in proc.stderr
    # A field's own error shows its value, a credential's does not.
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "gateway"], cwd=ROOT,
                          env={**os.environ, "AGENT_PORT": "eighty", "REDIS_PASSWORD": "pw123",
                               "REDIS_MAX_CONNECTIONS": "-1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "'eighty'" in proc.stderr and "pw123" not in proc.stderr
