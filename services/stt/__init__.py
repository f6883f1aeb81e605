"""Offline speech-to-text service speaking the xRx STT WebSocket protocol.

Wire protocol (``STT_PATH``, default ``/api/v1/ws`` on ``STT_PORT`` 8001): each binary message
is one utterance of PCM s16le mono 16 kHz; the server answers each with exactly one text frame
holding the transcript. The answer is the empty string ``""`` when nothing was recognised and
also when the utterance is rejected (empty, odd byte length, longer than 60 s), because the
protocol has no error frame; the reason is logged and the connection stays open. Text frames
from the client are logged and ignored (no answer).

Settings: ``STT_PROVIDER`` (``faster_whisper``), ``STT_MODEL`` (``tiny.en``, the bundled model,
or a CTranslate2 model directory). Extra environment variables, read once at start-up:
``STT_CPU_THREADS`` (CTranslate2 threads, default 1) and ``STT_BEAM_SIZE`` (default 5).

Run with ``python -m services.stt``.
"""

from services.stt.providers import load_transcriber
from services.stt.server import create_app, run

__all__ = ["create_app", "load_transcriber", "run"]
