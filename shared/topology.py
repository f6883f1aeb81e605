"""The pipeline's topology, declared once: which stage reads which entry type, and where a
session's entries go.

    client -> gateway -> vad -> stt_bridge -> agent_bridge -> tts_bridge
                    |      \\--(the user's voice)--^--------------^
                    \\-------(text, actions)-------^
    every stage -> replies -> gateway -> client

Every write to a stage's input or to the replies goes through :func:`send` / :func:`reply`,
so a stage is never paired with the wrong entry type and no module spells a stream name.

A session's entries for a stage all go to one of ``PARTITIONS`` partition streams, chosen by
hashing the session id; replicas of the stage hold partitions through leases
(shared/leases.py) and rebalance them as replicas come and go. A replica's read is one
XREADGROUP over the few partitions it holds, whatever the number of sessions in them.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.keys import Stage
from shared.leases import check_lease
from shared.messages import (
    AgentInput,
    AudioIn,
    Entry,
    InputKind,
    Reply,
    SpeakIn,
    SpeakKind,
    SpeechKind,
    UtteranceIn,
    audio_batch,
)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    stage: Stage
    entry: type[Entry]  # what the stage's input carries
    close: Entry  # the marker that ends a session at this stage (session_id filled in)
    fed_by: tuple[str, ...]  # who writes to it, for readers of this table
    # Entries kept per partition stream at most: a backstop against unbounded growth when
    # the stage falls behind. The VAD's input is trimmed by age instead (send_audio).
    maxlen: int
    # Entries a replica reads per partition per round: what one read may hold in memory.
    read_count: int = 2000


PIPELINE: tuple[StageSpec, ...] = (
    # An entry holds 40-80 ms of audio of every session of its partition (one per gateway
    # write, shared/pacing.py), so entries say nothing about bytes or time: the gateway trims
    # by age (send_audio), and maxlen only bounds a partition before the gateway knows Redis's
    # clock. 50 entries a read is 2-4 s of the partition's audio: enough to catch up, and a
    # bounded read at any load.
    StageSpec(Stage.VAD, AudioIn, AudioIn(close=True), ("gateway",), maxlen=5_000,
              read_count=50),
    # Utterances are large (up to VAD_MAX_UTTERANCE_MS of audio): minutes of them per
    # partition at 500 sessions, while no stt-bridge runs.
    StageSpec(Stage.STT_BRIDGE, UtteranceIn, UtteranceIn(kind=SpeechKind.CLOSE), ("vad",),
              maxlen=500),
    StageSpec(Stage.AGENT_BRIDGE, AgentInput, AgentInput(kind=InputKind.CLOSE),
              ("gateway", "stt_bridge", "vad (the user's voice, for barge-in)"), maxlen=10_000),
    StageSpec(Stage.TTS_BRIDGE, SpeakIn, SpeakIn(kind=SpeakKind.CLOSE),
              ("agent_bridge", "vad (the user's voice, for barge-in)"), maxlen=10_000),
)
SPECS: dict[Stage, StageSpec] = {spec.stage: spec for spec in PIPELINE}

# Replies kept per partition at most, whatever their age (gateway/reply_trim.py trims by age).
REPLY_MAXLEN = 5_000
# Replies are kept this long past the resume window (SESSION_TTL_S after a drop): what a client
# that was lagging behind when it dropped may still miss.
REPLY_GRACE_S = 30


def reply_keep_s(session_ttl_s: int) -> int:
    """How long a reply stays in its partition: long enough for any resume to replay it."""
    return session_ttl_s + REPLY_GRACE_S

DEFAULT_PARTITIONS = 32
_partitions = DEFAULT_PARTITIONS


def configure(partitions: int) -> None:
    """Set the partition count (``PARTITIONS``): every process of a deployment must agree."""
    global _partitions
    _partitions = partitions


def partitions() -> int:
    return _partitions


def partition_of(sid: str) -> int:
    return zlib.crc32(sid.encode()) % _partitions


def input_stream(stage: Stage, sid: str) -> str:
    return keys.stage_partition(stage, partition_of(sid))


def reply_streams() -> list[str]:
    return [keys.reply_partition(n) for n in range(_partitions)]


Writer = Redis | Pipeline


def send(w: Writer, stage: Stage, entry: Entry) -> Any:
    """Append ``entry`` to its session's partition of ``stage``'s input (queued when ``w`` is
    a pipeline, awaitable otherwise)."""
    check_lease()
    spec = SPECS[stage]
    if not isinstance(entry, spec.entry):
        raise TypeError(f"{stage.value} takes {spec.entry.__name__}, not {type(entry).__name__}")
    sid: str = entry.session_id  # type: ignore[attr-defined]
    if not sid:
        raise ValueError("an entry must name its session")
    return w.xadd(input_stream(stage, sid), entry.encode(), maxlen=spec.maxlen,
                  approximate=True)


def send_audio(w: Writer, frames: dict[str, bytes], keep_after_ms: int | None = None) -> None:
    """Queue client audio for the VAD stage on pipeline ``w``: one entry per partition,
    holding the audio of every session in ``frames`` that hashes to it (messages.audio_batch).

    ``keep_after_ms`` (Redis's clock) trims each partition to the audio written after it:
    audio older than the VAD takes (``VAD_MAX_LAG_MS``) is shed there anyway, and an input
    that keeps growing while the VAD is behind is what overload must not do to Redis."""
    spec = SPECS[Stage.VAD]
    by_partition: dict[int, dict[str, bytes]] = {}
    for sid, pcm in frames.items():
        if not sid:
            raise ValueError("an entry must name its session")
        by_partition.setdefault(partition_of(sid), {})[sid] = pcm
    for n, part in by_partition.items():
        stream = keys.stage_partition(Stage.VAD, n)
        if keep_after_ms is None:
            w.xadd(stream, audio_batch(part), maxlen=spec.maxlen, approximate=True)
        else:
            w.xadd(stream, audio_batch(part), minid=f"{keep_after_ms}-0", approximate=True)


def reply(w: Writer, entry: Reply) -> Any:
    """Append a reply for the client to its session's reply partition."""
    check_lease()
    if not entry.session_id:
        raise ValueError("a reply must name its session")
    return w.xadd(keys.reply_partition(partition_of(entry.session_id)), entry.encode(),
                  maxlen=REPLY_MAXLEN, approximate=True)


def trim_replies(w: Writer, min_ms: int) -> None:
    """Queue the trim of every reply partition to entries at or after ``min_ms`` (Redis's
    clock; whole macro nodes only, which keeps it cheap)."""
    for stream in reply_streams():
        w.xtrim(stream, minid=f"{min_ms}-0", approximate=True)


def close_markers(sid: str) -> list[tuple[Stage, Entry]]:
    return [(spec.stage, dataclasses.replace(spec.close, session_id=sid))  # type: ignore[type-var]
            for spec in PIPELINE]
