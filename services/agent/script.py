"""The deterministic pizza-ordering script: what the user said -> sentences and widgets.

Pure and synchronous; it mutates only the session dict it is given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from services.agent import order
from services.agent.menu import (
    BY_KEY,
    CURRENCY,
    MENU,
    SIZES,
    dollars,
    find_mentions,
    find_pizza,
    find_size,
    money,
)

Session = dict[str, Any]

CAPABILITIES = (
    "I can read you the menu, add or remove pizzas, tell you what is in your order, "
    "and place it."
)


class Intent(Enum):
    GREETING = "greeting"
    MENU = "menu"
    PRICE = "price"
    ADD = "add"
    ASK_WHICH = "ask_which"
    REMOVE = "remove"
    CLEAR = "clear"
    SUMMARY = "summary"
    CHECKOUT = "checkout"
    THANKS = "thanks"
    HELP = "help"


# Intents that only talk and never touch the order; in LLM mode the model answers these.
CONVERSATIONAL = frozenset({Intent.GREETING, Intent.MENU, Intent.THANKS, Intent.HELP})


@dataclass
class Reply:
    sentences: list[str] = field(default_factory=list)
    widgets: list[dict[str, Any]] = field(default_factory=list)


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u2019", "'").lower()).strip()


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def classify(text: str) -> Intent:
    t = normalize(text)
    if _has(r"\b(clear|empty|reset)\b.*\border\b|\bstart over\b|\bcancel (my|the) order\b", t):
        return Intent.CLEAR
    if _has(r"\b(remove|delete|drop|take off|take out|cancel)\b", t):
        return Intent.REMOVE
    if _has(
        r"\bcheck ?out\b|\bplace (my |the |an )?order\b|\bconfirm\b|\bthat'?s (all|it)\b", t
    ):
        return Intent.CHECKOUT
    if _has(
        r"\bmy order\b|\border summary\b|\bsummary\b|\bwhat did i (order|get)\b"
        r"|\bwhat'?s in (my|the) (order|cart)\b|\bmy cart\b|\bmy total\b",
        t,
    ):
        return Intent.SUMMARY
    if _has(r"\bhow much\b|\bprices?\b|\bcosts?\b", t) and find_pizza(t):
        return Intent.PRICE
    if find_mentions(t):
        return Intent.ADD
    if _has(r"\bmenu\b|\bwhat (pizzas|kinds?|do you have)\b|\boptions\b|\bprices?\b", t):
        return Intent.MENU
    if _has(r"\b(like|want|add|order|get|have|buy)\b", t):
        return Intent.ASK_WHICH
    if _has(r"\b(thanks|thank you|cheers)\b", t):
        return Intent.THANKS
    if _has(r"^(hello|hi|hey|howdy|good (morning|afternoon|evening))\b", t):
        return Intent.GREETING
    return Intent.HELP


def menu_widget() -> dict[str, Any]:
    return {
        "type": "menu",
        "details": {
            "currency": CURRENCY,
            "sizes": list(SIZES),
            "pizzas": [
                {"pizza": p.key, "name": p.name,
                 "prices": {s: dollars(c) for s, c in p.cents.items()}}
                for p in MENU
            ],
        },
    }


def _price_line(key: str) -> str:
    p = BY_KEY[key]
    return (
        f"{p.name} is {money(p.cents['small'])} small, {money(p.cents['medium'])} medium, "
        f"and {money(p.cents['large'])} large."
    )


def _menu() -> Reply:
    lines = [_price_line(p.key) for p in MENU]
    return Reply(["Here is our menu.", *lines, "What would you like?"], [menu_widget()])


def _price(text: str) -> Reply:
    found = find_pizza(text)
    if found is None:
        return _menu()
    pizza, rest = found
    size = find_size(rest)
    if size is None:
        return Reply([_price_line(pizza.key)])
    return Reply([f"A {size} {pizza.name} is {money(pizza.cents[size])}."])


def _add(text: str, session: Session) -> Reply:
    out: list[str] = []
    if order.is_placed(session):
        out.append("Starting a new order.")
    for m in find_mentions(text):
        item = order.add(session, m.pizza, m.size or "medium", m.quantity)
        out.append(f"Added {order.describe(item)}.")
    out.append(order.total_sentence(session))
    out.append("Anything else?")
    return Reply(out)


def _remove(text: str, session: Session) -> Reply:
    if order.is_placed(session):
        return Reply(["Your order has already been placed.", "I can't change it now."])
    found = find_pizza(text)
    if found is None:
        if not order.items(session):
            return Reply(["Your order is empty."])
        return Reply(["Which pizza should I remove?"])
    pizza, rest = found
    item = order.find(session, pizza, find_size(rest)) or order.find(session, pizza, None)
    if item is None:
        return Reply([f"There is no {pizza.name} in your order."])
    return remove_line(session, item)


def remove_line(session: Session, item: order.Item) -> Reply:
    order.remove(session, item)
    return Reply([f"Removed {order.describe(item)}.", order.total_sentence(session)])


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def summary(session: Session) -> Reply:
    lines = order.items(session)
    if not lines:
        return Reply(["Your order is empty.", "Ask for the menu to get started."],
                      [order.summary_widget(session)])
    out = [f"{_upper_first(order.describe(i))}, {money(order.line_cents(i))}." for i in lines]
    if order.is_placed(session):
        out.insert(0, f"Order {session.get('order_number')} is placed.")
    else:
        out.insert(0, "Here is your order.")
    out.append(order.total_sentence(session))
    return Reply(out, [order.summary_widget(session)])


def checkout(session: Session) -> Reply:
    if order.is_placed(session):
        return Reply([f"Order {session.get('order_number')} has already been placed."])
    if not order.items(session):
        return Reply(["Your order is empty.", "What would you like to order?"])
    number = order.place(session)
    return Reply(
        [
            "Your order is placed.",
            f"Your order number is {number}.",
            order.total_sentence(session),
            "It will be ready in about twenty minutes.",
        ],
        [order.summary_widget(session)],
    )


def respond(text: str, session: Session) -> Reply:
    """Answer one user message, updating ``session`` in place."""
    t = normalize(text)
    intent = classify(t)
    if intent is Intent.GREETING:
        return Reply(["Hello! Welcome to Demo Pizza.", "Would you like to hear the menu?"])
    if intent is Intent.MENU:
        return _menu()
    if intent is Intent.PRICE:
        return _price(t)
    if intent is Intent.ADD:
        return _add(t, session)
    if intent is Intent.ASK_WHICH:
        names = ", ".join(p.name for p in MENU)
        return Reply(["Which pizza would you like?", f"We have {names}."])
    if intent is Intent.REMOVE:
        return _remove(t, session)
    if intent is Intent.CLEAR:
        order.clear(session)
        return Reply(["Your order is now empty."])
    if intent is Intent.SUMMARY:
        return summary(session)
    if intent is Intent.CHECKOUT:
        return checkout(session)
    if intent is Intent.THANKS:
        return Reply(["You're welcome!"])
    return Reply(["Sorry, I didn't catch that.", CAPABILITIES])


def xrx_widget(widget: dict[str, Any]) -> dict[str, Any]:
    """A widget in the xRx convention, the Widget event's ``output``:
    ``{"type": <name>, "details": "<JSON string>", "available-tools": [...]}``. xRx apps read
    ``type`` and ``JSON.parse(details)``; ``available-tools`` names the tools the widget's
    buttons call, with their argument names. ``details.actions`` (labelled buttons with their
    parameters) is this demo's own addition inside ``details``."""
    details = widget.get("details") or {}
    if isinstance(details, str):  # already in the xRx form (a model's tool call arguments)
        encoded = details
        details = _json_object(details)
    else:
        encoded = json.dumps(details, separators=(",", ":"))
    tools: dict[str, list[str]] = {}
    for action in details.get("actions", []):
        tools.setdefault(action["tool"], sorted(action.get("parameters") or {}))
    return {
        "type": widget["type"],
        "details": encoded,
        "available-tools": [{"tool": t, "arguments": args} for t, args in tools.items()],
    }


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
