"""Widget button presses: xRx ``action`` bodies ``{"type":"tool","details":{...}}``."""

from __future__ import annotations

import json
from typing import Any

from services.agent import order, script
from services.agent.menu import find_pizza, find_size
from services.agent.script import Reply

Session = dict[str, Any]

TOOLS = ("confirm_order", "remove_item")


def _parameters(details: dict[str, Any]) -> dict[str, Any]:
    params = details.get("parameters")
    # The orchestrator should parse the client's JSON string, but tolerate it arriving raw.
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except ValueError:
            return {}
    return params if isinstance(params, dict) else {}


def _find_item(session: Session, ref: object) -> order.Item | None:
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        return order.find_by_id(session, int(ref))
    if isinstance(ref, str):
        text = script.normalize(ref)
        found = find_pizza(text)
        if found is not None:
            pizza, rest = found
            return order.find(session, pizza, find_size(rest))
    return None


def _remove_item(session: Session, params: dict[str, Any]) -> Reply:
    if order.is_placed(session):
        return Reply(["Your order has already been placed.", "I can't change it now."])
    item = _find_item(session, params.get("item"))
    if item is None:
        return Reply(["I couldn't find that item in your order."],
                     [order.summary_widget(session)])
    reply = script.remove_line(session, item)
    # The press came from a widget, so give it a fresh one to replace the stale copy.
    reply.widgets.append(order.summary_widget(session))
    return reply


def handle_action(action: dict[str, Any], session: Session) -> Reply:
    """Run one widget action, updating ``session`` in place."""
    if action.get("type") != "tool":
        return Reply(["Sorry, I can't handle that kind of action."])
    details = action.get("details")
    details = details if isinstance(details, dict) else {}
    tool = details.get("tool")
    params = _parameters(details)
    if tool == "confirm_order":
        return script.checkout(session)
    if tool == "remove_item":
        return _remove_item(session, params)
    return Reply([
        "Sorry, I can't do that from here.",
        "I can confirm your order or remove an item.",
    ])
