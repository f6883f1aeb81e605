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
RECORD_AGENT_TASK = "agent_task"
# Turn numbers of work in progress, read by barge-in to know whether there is anything to stop.
RECORD_AGENT_BUSY = "agent_busy"
RECORD_TTS_BUSY = "tts_busy"
# Whether the user is talking now (VAD), and when their voice last stopped (wall-clock ms):
# a transcript waits while the user goes on talking (AGENT_WAIT_MS).
RECORD_SPEAKING = "speaking"
RECORD_LAST_VOICE_MS = "last_voice_ms"
# Utterances the VAD has sent to STT so far; each carries its number.
RECORD_UTTERANCES = "utterances"
# Wall-clock time (ms) until which the client is still playing audio already sent to it.
RECORD_PLAYBACK_UNTIL = "playback_until_ms"


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


def fence(sid: str) -> str:
    """Lowest turn number still alive: replies of lower turns never reach the client."""
    return f"{PREFIX}:{{{sid}}}:fence"


def stage_input(sid: str, stage: Stage) -> str:
    """The per-session input stream a stage consumes, in order, for one session."""
    return f"{PREFIX}:{{{sid}}}:in:{stage.value}"


def reply(sid: str) -> str:
    """The session's reply stream, read by the gateway that holds the client connection."""
    return f"{PREFIX}:{{{sid}}}:reply"


def checkpoint(sid: str, stage: Stage) -> str:
    """A stage's serialised per-session state, so another replica can resume the session."""
    return f"{PREFIX}:{{{sid}}}:state:{stage.value}"


def utterance(sid: str, utterance_id: str) -> str:
    """Audio of one finished utterance, referenced from the STT stage's input entry."""
    return f"{PREFIX}:{{{sid}}}:utt:{utterance_id}"


def ownership_queue(stage: Stage) -> str:
    """One entry per open session; the replica holding it pending owns the session."""
    return f"{PREFIX}:owners:{stage.value}"


def gateway_wake(gateway_id: str) -> str:
    """Wakes a gateway's blocked reply reader when its set of sessions changes."""
    return f"{PREFIX}:gateway:{gateway_id}:wake"


def session_keys(sid: str) -> list[str]:
    """Every key a session owns, for expiry when it closes."""
    keys = [session_record(sid), history(sid), history_marks(sid), agent_session(sid),
            turn_counter(sid), fence(sid),
            reply(sid)]
    for stage in Stage:
        keys += [stage_input(sid, stage), checkpoint(sid, stage)]
    return keys
