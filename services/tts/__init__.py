"""Offline text-to-speech service speaking the xRx TTS WebSocket protocol.

Wire protocol (``TTS_PATH``, default ``/api/v1/ws`` on ``TTS_PORT`` 8002):

- client text frame ``{"action":"synthesize","text":"..."}``: the server streams binary frames
  of PCM s16le mono at ``TTS_SAMPLE_RATE`` (each at most ``TTS_CHUNK_MS`` of audio, always whole
  samples), then the text frame ``{"action":"done"}``. Text that yields no audio (empty or
  blank) gets ``done`` alone. A failed synthesis is logged and still ends with ``done`` so the
  orchestrator, which holds further replies until ``done``, is never stuck.
- client ``{"action":"cancel"}``: the synthesis in flight stops and sends nothing more, not
  even ``done``. A ``synthesize`` while one is in flight cancels it the same way first, so
  every ``done`` belongs to the latest request. Cancelling with nothing in flight is a no-op.
- anything else (malformed JSON, unknown action, binary frames): logged and ignored; the
  protocol has no error frame and the connection stays open.

Audio is cached by (provider, voice, sample rate, text) in memory and, when ``TTS_CACHE_DIR``
is set, on disk; only complete syntheses are stored.

Settings: ``TTS_PROVIDER`` (``piper``), ``TTS_SAMPLE_RATE``, ``TTS_CHUNK_MS``,
``TTS_CACHE_DIR``. Extra environment variables, read once at start-up: ``TTS_THREADS``
(ONNX Runtime threads, default 1) and ``TTS_DETERMINISTIC`` (``1``/``true``: no sampling noise,
the same text always gives the same audio; default off, for a more natural voice).

Run with ``python -m services.tts``.
"""

from services.tts.providers import load_synthesizer
from services.tts.server import create_app, run

__all__ = ["create_app", "load_synthesizer", "run"]
