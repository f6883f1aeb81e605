"""Instant fake STT/agent/TTS for the fault benchmark, which tell which utterances a reply
answers: ``python -m bench.fault_fakes --port P``.

Every utterance the benchmark's driver sends is marked in its audio: the low bit of the first
``MARK_SAMPLES`` samples of every 30 ms speech frame spells a sync word, the session's index,
the utterance's index and a check word (one bit of a 16-bit sample: inaudible, and no change
the VAD can notice). The VAD and the STT bridge pass audio bytes through untouched, so:

- the fake STT finds every mark in the utterance it is sent and answers with one token per
  utterance found, ``s<session>u<utterance>`` (``unmarked`` if none): an utterance that
  reached STT together with the next one is transcribed ``s3u12 s3u13``;
- the fake agent answers the user messages since its last reply in the history it is sent
  (the STT bridge also joins transcripts held while the user talks on, and a turn cancelled
  before its reply leaves its user message behind): ``re <session guid> s3u12 s3u13``;
- the fake TTS writes its text and the chunk's index at the head of every PCM chunk, so the
  driver knows which reply (hence which utterances) every audio frame it receives belongs to,
  and sees a chunk delivered twice.

The marks survive whatever the pipeline does to timing (batching, failover, re-delivery), and
unlike transcripts of distinct sentences they need no speech recogniser to read back.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from bench import pipeline_fakes

FRAME_SAMPLES = 480  # the driver's 30 ms frames
MARK_SAMPLES = 64
SYNC = 0xB38F
UNMARKED = "unmarked"
TOKEN = re.compile(r"s(\d+)u(\d+)|" + UNMARKED)
REPLY_PREFIX = "re"
AUDIO_TAG = b"XRX|"
_CHUNK = pipeline_fakes._CHUNK


def _check(sess: int, utt: int) -> int:
    return (sess * 0x9E37 + utt * 0x79B9 + 0x5A5A) & 0xFFFF


def mark_bits(sess: int, utt: int) -> np.ndarray:
    """The ``MARK_SAMPLES`` low bits of every speech frame of utterance ``utt`` of ``sess``."""
    words = (SYNC, sess & 0xFFFF, utt & 0xFFFF, _check(sess & 0xFFFF, utt & 0xFFFF))
    return np.array([(w >> (15 - j)) & 1 for w in words for j in range(16)], dtype=np.int16)


def watermark(speech: bytes, sess: int, utt: int) -> bytes:
    """``speech`` (whole 30 ms frames of s16le) with every frame marked."""
    frames = np.frombuffer(speech, dtype="<i2").reshape(-1, FRAME_SAMPLES).copy()
    frames[:, :MARK_SAMPLES] = (frames[:, :MARK_SAMPLES] & np.int16(-2)) | mark_bits(sess, utt)
    return frames.tobytes()


def find_marks(pcm: bytes) -> list[tuple[int, int]]:
    """Distinct (session, utterance) marks in ``pcm``, in order, at any sample offset."""
    s = np.frombuffer(pcm[:len(pcm) // 2 * 2], dtype="<i2")
    if len(s) < MARK_SAMPLES:
        return []
    lsb = (s & 1).astype(np.uint32)
    # words[i] = the 16 low bits starting at sample i, most significant first.
    words: np.ndarray[Any, Any] = np.zeros(len(lsb) - 15, dtype=np.uint32)
    for j in range(16):
        words = (words << 1) | lsb[j:j + len(words)]
    found: list[tuple[int, int]] = []
    for i in np.nonzero(words[:len(lsb) - MARK_SAMPLES + 1] == SYNC)[0]:
        sess, utt, check = int(words[i + 16]), int(words[i + 32]), int(words[i + 48])
        if check == _check(sess, utt) and (sess, utt) not in found:
            found.append((sess, utt))
    return found


def transcript_of(pcm: bytes) -> str:
    return " ".join(f"s{s}u{u}" for s, u in find_marks(pcm)) or UNMARKED


def tokens(text: str) -> list[str]:
    return [m.group(0) for m in TOKEN.finditer(text)]


def reply_to(messages: list[Any], guid: str) -> str:
    """The reply naming every utterance in the user messages since the last assistant one."""
    pending: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        if m.get("role") == "assistant":
            pending = []
        elif m.get("role") == "user" and isinstance(m.get("content"), str):
            pending += tokens(m["content"])
    return " ".join([REPLY_PREFIX, guid or "-", *pending])


def tag_chunk(text: str, index: int) -> bytes:
    head = AUDIO_TAG + f"{index}|{text}|".encode()
    return head + _CHUNK[len(head):] if len(head) < len(_CHUNK) else head


def parse_tag(frame: bytes | bytearray | memoryview) -> tuple[str, int] | None:
    """(reply text, chunk index) of an audio frame the fake TTS made, else None."""
    head = bytes(frame[:512])
    if not head.startswith(AUDIO_TAG):
        return None
    parts = head.split(b"|", 3)
    if len(parts) < 4:
        return None
    try:
        return parts[2].decode(errors="replace"), int(parts[1])
    except ValueError:
        return None


MARKED = pipeline_fakes.Behaviour(transcript=transcript_of, reply=reply_to, chunk=tag_chunk)


def main() -> None:
    pipeline_fakes.main(MARKED, prog="python -m bench.fault_fakes")


if __name__ == "__main__":
    main()
