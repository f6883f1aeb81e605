"""Everything one session's VAD needs between frames, and its compact wire form.

A session may move to another worker in the middle of an utterance (lease lost, worker
restarted), so the state is plain data with a versioned binary encoding: no pickle (it would
let whoever can write to Redis run code in the worker) and no torch objects (so the
segmenter and the encoding stay importable without the model).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

RNN_SHAPE = (2, 1, 128)
CONTEXT_SAMPLES = 64

_MAGIC = b"SVAD"
_VERSION = 2
# magic, version, flags, then the sample counters, then the variable-length blob sizes.
_HEADER = struct.Struct("<4sBB7q4I")
# Version 1 (no voice_start): still read, so checkpoints survive a rolling upgrade.
_HEADER_V1 = struct.Struct("<4sBB6q4I")
_RNN_BYTES = int(np.prod(RNN_SHAPE)) * 4
_CONTEXT_BYTES = CONTEXT_SAMPLES * 4
_FLAG_TRIGGERED = 1
_FLAG_SPEECH_STARTED = 2


def _zeros_rnn() -> np.ndarray:
    return np.zeros(RNN_SHAPE, dtype=np.float32)


def _zeros_context() -> np.ndarray:
    return np.zeros(CONTEXT_SAMPLES, dtype=np.float32)


@dataclass(eq=False)
class SessionVadState:
    """One session's model memory, unconsumed audio and segmentation progress.

    All times are sample indices into the session's audio (16 kHz), counted over the audio
    that has been cut into windows, so results do not depend on wall clock or frame sizes.
    """

    session_id: str
    # Silero's LSTM (h, c), shape [2, 1, 128]; zeros equal the package's fresh state.
    rnn_state: np.ndarray = field(default_factory=_zeros_rnn)
    # Last 64 samples of the previous window: the model sees them before each new window.
    context: np.ndarray = field(default_factory=_zeros_context)
    # s16le bytes received but not yet a whole window.
    remainder: bytes = b""
    # Samples consumed as windows so far: the session's clock.
    pos: int = 0
    # Audio just before the current position, kept while idle so an utterance can start
    # before the first window the model recognised as voice.
    preroll: bytearray = field(default_factory=bytearray)
    # In an utterance (voice seen and the closing silence not yet long enough).
    triggered: bool = False
    # The current utterance's audio so far, starting at ``buf_start``.
    buffer: bytearray = field(default_factory=bytearray)
    buf_start: int = 0
    # Samples of voice in the current utterance, for the minimum-speech check.
    voiced: int = 0
    # Samples of the current run of voice and of the gap interrupting it, for barge-in.
    run: int = 0
    gap: int = 0
    # Where the current stretch of silence inside an utterance began; -1 when none.
    silence_start: int = -1
    # SpeechStarted already sent for the current utterance.
    speech_started: bool = False
    # Where the voice of the current utterance began (the window that triggered it; for a
    # piece after a cut at max_utterance_ms, the cut): when the user began saying it.
    voice_start: int = 0

    def to_bytes(self, *, with_audio: bool = True) -> bytes:
        """The whole state; without ``with_audio``, the pre-roll and the utterance buffer are
        left out (a checkpoint keeps the buffer separately, appended as it grows)."""
        sid = self.session_id.encode()
        preroll = self.preroll if with_audio else b""
        buffer = self.buffer if with_audio else b""
        flags = (_FLAG_TRIGGERED if self.triggered else 0) | (
            _FLAG_SPEECH_STARTED if self.speech_started else 0
        )
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            flags,
            self.pos,
            self.buf_start,
            self.voiced,
            self.run,
            self.gap,
            self.silence_start,
            self.voice_start,
            len(sid),
            len(self.remainder),
            len(preroll),
            len(buffer),
        )
        return b"".join(
            (
                header,
                np.ascontiguousarray(self.rnn_state, dtype="<f4").tobytes(),
                np.ascontiguousarray(self.context, dtype="<f4").tobytes(),
                sid,
                self.remainder,
                preroll,
                buffer,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionVadState:
        if len(data) < _HEADER_V1.size:
            raise ValueError("VAD state too short")
        magic, version = data[:4], data[4]
        if magic != _MAGIC or version not in (1, _VERSION):
            raise ValueError(f"not a VAD state (magic {magic!r}, version {version})")
        header = _HEADER if version == _VERSION else _HEADER_V1
        if len(data) < header.size:
            raise ValueError("VAD state too short")
        fields = header.unpack_from(data)
        if version == 1:  # the voice began where the buffer did, pre-roll included
            fields = (*fields[:9], fields[4], *fields[9:])
        (
            _,
            _,
            flags,
            pos,
            buf_start,
            voiced,
            run,
            gap,
            silence_start,
            voice_start,
            n_sid,
            n_rem,
            n_pre,
            n_buf,
        ) = fields
        expected = header.size + _RNN_BYTES + _CONTEXT_BYTES + n_sid + n_rem + n_pre + n_buf
        if len(data) != expected:
            raise ValueError(f"VAD state is {len(data)} bytes, header says {expected}")
        mv = memoryview(data)
        off = header.size

        def take(n: int) -> memoryview:
            nonlocal off
            chunk = mv[off : off + n]
            off += n
            return chunk

        rnn = np.frombuffer(take(_RNN_BYTES), dtype="<f4").astype(np.float32).reshape(RNN_SHAPE)
        context = np.frombuffer(take(_CONTEXT_BYTES), dtype="<f4").astype(np.float32)
        return cls(
            session_id=bytes(take(n_sid)).decode(),
            rnn_state=rnn,
            context=context,
            remainder=bytes(take(n_rem)),
            pos=pos,
            preroll=bytearray(take(n_pre)),
            triggered=bool(flags & _FLAG_TRIGGERED),
            buffer=bytearray(take(n_buf)),
            buf_start=buf_start,
            voiced=voiced,
            run=run,
            gap=gap,
            silence_start=silence_start,
            speech_started=bool(flags & _FLAG_SPEECH_STARTED),
            voice_start=voice_start,
        )
