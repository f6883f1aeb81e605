"""Every Redis key and stream name, defined once.

A session's keys share the hash tag ``{<sid>}`` so they live on one Redis Cluster slot and
multi-key commands on one session stay legal.
"""

from __future__ import annotations

from enum import StrEnum

PREFIX = "xrx"


class Stage(StrEnum):
    """A pipeline stage that owns sessions: its consumer group and its ownership queue."""

    AGENT_BRIDGE = "agent_bridge"
    VAD = "vad"
    STT_BRIDGE = "stt_bridge"
    TTS_BRIDGE = "tts_bridge"


# Fields of the session record hash.
RECORD_STATUS = "status"
RECORD_GATEWAY = "gateway"
RECORD_OPENED_AT = "opened_at"


def session_record(sid: str) -> str:
    """Hash with the session's status; its TTL is refreshed while the client is connected."""
    return f"{PREFIX}:{{{sid}}}:session"


def history(sid: str) -> str:
    """List of chat messages (JSON), oldest first."""
    return f"{PREFIX}:{{{sid}}}:history"


def history_marks(sid: str) -> str:
    """Hash: per kind of history write, the last turn that wrote it (a re-run turn after a
    failover must not append the same messages twice)."""
    return f"{PREFIX}:{{{sid}}}:history_marks"


def agent_session(sid: str) -> str:
    """The agent's session dict (JSON) that round-trips on every agent call."""
    return f"{PREFIX}:{{{sid}}}:agent_session"


def turn_counter(sid: str) -> str:
    return f"{PREFIX}:{{{sid}}}:turn"


def turn_marks(sid: str) -> str:
    """Hash: per source of turns, the mark of the last input that started one (a transcript
    published again after a failover must not start a second turn)."""
    return f"{PREFIX}:{{{sid}}}:turn_marks"


def turn_started(sid: str) -> str:
    """Hash: the latest turn the agent bridge started and when (Redis clock, ms). An input the
    user began before that waits its turn instead of cutting it short (shared/turns.py)."""
    return f"{PREFIX}:{{{sid}}}:turn_started"


def fence(sid: str) -> str:
    """Lowest turn number still alive: replies of lower turns never reach the client."""
    return f"{PREFIX}:{{{sid}}}:fence"


def checkpoint(sid: str, stage: Stage) -> str:
    """A stage's serialised per-session state, so another replica can resume the session."""
    return f"{PREFIX}:{{{sid}}}:state:{stage.value}"


def checkpoint_audio(sid: str, stage: Stage) -> str:
    """Audio that belongs to a checkpoint (the utterance in progress), appended as it grows
    rather than copied whole on every save."""
    return f"{PREFIX}:{{{sid}}}:state:{stage.value}:audio"


# --- partitions ----------------------------------------------------------------------------
# A stage reads a fixed number of partition streams; a session's entries for a stage all go to
# one partition (shared/topology.py), so a replica's read costs the same however many sessions
# it serves. A partition's keys share the hash tag ``{<stage>.<n>}``: one Redis Cluster slot.

REPLIES = "reply"  # the partitions of replies to clients, read by the gateways


def partition_tag(name: str, n: int) -> str:
    return f"{{{name}.{n}}}"


def stage_partition(stage: Stage, n: int) -> str:
    """Partition ``n`` of a stage's input: entries of many sessions, each in session order."""
    return f"{PREFIX}:{partition_tag(stage.value, n)}:in"


def reply_partition(n: int) -> str:
    """Partition ``n`` of the replies to clients."""
    return f"{PREFIX}:{partition_tag(REPLIES, n)}:out"


def partition_lease(stage: Stage, n: int) -> str:
    """Who holds partition ``n`` of a stage, as ``<replica> <epoch>``; expires unless renewed."""
    return f"{PREFIX}:{partition_tag(stage.value, n)}:lease"


def partition_epoch(stage: Stage, n: int) -> str:
    """Counts the leases ever granted on a partition: a later holder has a higher epoch."""
    return f"{PREFIX}:{partition_tag(stage.value, n)}:epoch"


def partition_sessions(n: int) -> str:
    """Set of the open sessions whose id hashes to partition ``n``: whichever replica holds
    the partition reaps those whose record expired, even ones it never heard from."""
    return f"{PREFIX}:{partition_tag('sessions', n)}:ids"


def stage_load(stage: Stage) -> str:
    """Hash: partition -> ``<holder> <sessions>``, written by each holder as it heartbeats;
    the gateway places new sessions by it."""
    return f"{PREFIX}:load:{stage.value}"


def stage_members(stage: Stage) -> str:
    """Sorted set of a stage's live replicas, scored by their last heartbeat (ms)."""
    return f"{PREFIX}:members:{stage.value}"


def partition_count() -> str:
    """String: the PARTITIONS of the deployment using this Redis, set by its first process."""
    return f"{PREFIX}:partitions"


def gateway_marker(gateway_id: str) -> str:
    """A key a gateway keeps while it runs; when it vanishes, Redis lost its data."""
    return f"{PREFIX}:gateway:{gateway_id}:alive"


def session_keys(sid: str) -> list[str]:
    """Every key a session owns, for expiry when it closes."""
    keys = [session_record(sid), history(sid), history_marks(sid), agent_session(sid),
            turn_counter(sid), turn_marks(sid), turn_started(sid), fence(sid)]
    for stage in Stage:
        keys += [checkpoint(sid, stage), checkpoint_audio(sid, stage)]
    return keys
