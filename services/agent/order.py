"""The order kept in the session dict, which round-trips through the orchestrator each turn.

Session keys used (besides the orchestrator's ``guid``):
``order`` (list of line items), ``order_status`` ("open" or "placed"), ``order_number``,
``orders_placed`` (how many orders this session has placed).
"""

from __future__ import annotations

import re
from typing import Any

from services.agent.menu import BY_KEY, CURRENCY, SIZES, Pizza, dollars, money
from shared.protocols import SESSION_GUID

Item = dict[str, Any]
Session = dict[str, Any]


def _valid(item: object) -> bool:
    # The session comes back from a client we do not control; ignore lines we cannot price.
    return (
        isinstance(item, dict)
        and item.get("pizza") in BY_KEY
        and item.get("size") in SIZES
        and isinstance(item.get("quantity"), int)
        and isinstance(item.get("id"), int)
    )


def items(session: Session) -> list[Item]:
    raw = session.get("order")
    return [i for i in raw if _valid(i)] if isinstance(raw, list) else []


def is_placed(session: Session) -> bool:
    return session.get("order_status") == "placed"


def line_cents(item: Item) -> int:
    return int(BY_KEY[item["pizza"]].cents[item["size"]]) * int(item["quantity"])


def total_cents(session: Session) -> int:
    return sum(line_cents(i) for i in items(session))


def describe(item: Item) -> str:
    qty = int(item["quantity"])
    name = f"{item['size']} {BY_KEY[item['pizza']].name.lower()}"
    return f"a {name}" if qty == 1 else f"{qty} {name}s"


def _start_new_if_placed(session: Session) -> None:
    if is_placed(session):
        session["order"] = []
        session["order_status"] = "open"
        session.pop("order_number", None)


def add(session: Session, pizza: Pizza, size: str, quantity: int) -> Item:
    _start_new_if_placed(session)
    current = items(session)
    next_id = max((i["id"] for i in current), default=0) + 1
    item: Item = {
        "id": next_id,
        "pizza": pizza.key,
        "name": pizza.name,
        "size": size,
        "quantity": quantity,
        "price": 0.0,
        "status": "pending",
    }
    item["price"] = dollars(line_cents(item))
    session["order"] = [*current, item]
    session["order_status"] = "open"
    return item


def find(session: Session, pizza: Pizza | None, size: str | None) -> Item | None:
    """The most recently added line matching the pizza and (if given) size."""
    for item in reversed(items(session)):
        if pizza is not None and item["pizza"] != pizza.key:
            continue
        if size is not None and item["size"] != size:
            continue
        return item
    return None


def find_by_id(session: Session, item_id: int) -> Item | None:
    return next((i for i in items(session) if i["id"] == item_id), None)


def remove(session: Session, item: Item) -> None:
    session["order"] = [i for i in items(session) if i["id"] != item["id"]]


def clear(session: Session) -> None:
    session["order"] = []
    session["order_status"] = "open"
    session.pop("order_number", None)


def place(session: Session) -> str:
    """Mark every line confirmed and return the new order number."""
    placed = int(session.get("orders_placed") or 0) + 1
    prefix = re.sub(r"[^A-Za-z0-9]", "", str(session.get(SESSION_GUID) or ""))[:6].upper() or "DEMO"
    number = f"{prefix}-{placed}"
    session["order"] = [{**i, "status": "confirmed"} for i in items(session)]
    session["order_status"] = "placed"
    session["order_number"] = number
    session["orders_placed"] = placed
    return number


def summary_widget(session: Session) -> dict[str, Any]:
    lines = items(session)
    placed = is_placed(session)
    actions: list[dict[str, Any]] = []
    if lines and not placed:
        actions.append({"label": "Confirm order", "tool": "confirm_order", "parameters": {}})
        actions.extend(
            {
                "label": f"Remove {i['size']} {BY_KEY[i['pizza']].name}",
                "tool": "remove_item",
                "parameters": {"item": i["id"]},
            }
            for i in lines
        )
    return {
        "type": "order-summary",
        "details": {
            "order_number": session.get("order_number") if placed else None,
            "status": "placed" if placed else "open",
            "items": [{**i, "price": dollars(line_cents(i))} for i in lines],
            "total": dollars(total_cents(session)),
            "currency": CURRENCY,
            "actions": actions,
        },
    }


def total_sentence(session: Session) -> str:
    if not items(session):
        return "Your order is now empty."
    return f"Your total is {money(total_cents(session))}."
