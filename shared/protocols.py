"""The wire protocols between the bridges and the services they call, defined once.

Both sides import these names: the agent bridge and the demo agent / guardrails proxy, the
TTS bridge and the TTS service.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

# --- agent (HTTP + server-sent events) ---------------------------------------------------

TASK_ID_HEADER = "X-Task-ID"


class AgentField(StrEnum):
    """Fields of the request body and of the events the agent streams back."""

    MESSAGES = "messages"
    SESSION = "session"
    ACTION = "action"
    NODE = "node"
    OUTPUT = "output"
    GUARDRAILS = "guardrails"
    ERROR = "error"


# The key of the request's session object that holds the xRx session id.
SESSION_GUID = "guid"


def session_id_of(body: object) -> str | None:
    """The session id an agent request body carries, if it is one."""
    session = body.get(AgentField.SESSION) if isinstance(body, dict) else None
    guid = session.get(SESSION_GUID) if isinstance(session, dict) else None
    return str(guid) if guid else None


class AgentNode(StrEnum):
    CUSTOMER_RESPONSE = "CustomerResponse"
    TASK_DESCRIPTION_RESPONSE = "TaskDescriptionResponse"
    WIDGET = "Widget"


REPLY_NODES = frozenset({AgentNode.CUSTOMER_RESPONSE, AgentNode.TASK_DESCRIPTION_RESPONSE})


def agent_request(messages: list[dict[str, Any]], session: dict[str, Any],
                  action: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {AgentField.MESSAGES: messages, AgentField.SESSION: session}
    if action is not None:
        body[AgentField.ACTION] = action
    return body


def tool_action(tool: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The agent's ``action`` for a widget button press."""
    return {"type": "tool", "details": {"tool": tool, "parameters": parameters}}


def sse_event(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


# --- TTS (WebSocket) ---------------------------------------------------------------------

TTS_ACTION = "action"
TTS_TEXT = "text"


class TtsAction(StrEnum):
    SYNTHESIZE = "synthesize"
    CANCEL = "cancel"
    DONE = "done"


def tts_command(action: TtsAction, text: str | None = None) -> str:
    message: dict[str, str] = {TTS_ACTION: action}
    if text is not None:
        message[TTS_TEXT] = text
    return json.dumps(message)
