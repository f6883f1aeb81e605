"""The demo pizzeria's menu, and finding pizzas, sizes and quantities in what a user said."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

SIZES: Final = ("small", "medium", "large")
DEFAULT_SIZE: Final = "medium"
CURRENCY: Final = "USD"


@dataclass(frozen=True)
class Pizza:
    key: str
    name: str
    # Whole cents, so totals never pick up float rounding noise.
    cents: dict[str, int]
    aliases: tuple[str, ...]


MENU: Final[tuple[Pizza, ...]] = (
    Pizza("margherita", "Margherita", {"small": 800, "medium": 1000, "large": 1200},
          ("margherita", "margarita", "plain")),
    Pizza("pepperoni", "Pepperoni", {"small": 900, "medium": 1100, "large": 1300},
          ("pepperoni", "peperoni")),
    Pizza("hawaiian", "Hawaiian", {"small": 950, "medium": 1150, "large": 1350},
          ("hawaiian", "hawaii", "ham and pineapple", "pineapple")),
    Pizza("veggie", "Veggie", {"small": 900, "medium": 1100, "large": 1300},
          ("veggie", "vegetarian", "vegetable")),
    Pizza("four-cheese", "Four Cheese", {"small": 1000, "medium": 1200, "large": 1400},
          ("four cheese", "4 cheese", "quattro formaggi", "cheese")),
)
BY_KEY: Final = {p.key: p for p in MENU}

_NUMBERS: Final = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
MAX_QUANTITY: Final = 20


def _alias_pattern(alias: str) -> str:
    # Plurals ("two pepperonis") and "ham & pineapple" both count.
    body = r"\s+".join(re.escape(w) for w in alias.split())
    return rf"\b{body}(?:e?s)?\b"


# Longest aliases first, so "four cheese" wins over "cheese" and its "four" is not a quantity.
_ALIASES: Final = sorted(
    ((re.compile(_alias_pattern(a)), p) for p in MENU for a in p.aliases),
    key=lambda item: -len(item[0].pattern),
)


def money(cents: int) -> str:
    return f"${cents // 100}" if cents % 100 == 0 else f"${cents / 100:.2f}"


def dollars(cents: int) -> float:
    return round(cents / 100, 2)


@dataclass(frozen=True)
class Mention:
    pizza: Pizza
    size: str | None
    quantity: int


def find_pizza(text: str) -> tuple[Pizza, str] | None:
    """The first pizza named in ``text`` and the text with that name cut out."""
    best: tuple[int, re.Match[str], Pizza] | None = None
    for pattern, pizza in _ALIASES:
        m = pattern.search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m, pizza)
    if best is None:
        return None
    _, m, pizza = best
    return pizza, text[: m.start()] + " " + text[m.end() :]


def find_size(text: str) -> str | None:
    m = re.search(r"\b(small|medium|large|regular|big)\b", text)
    if not m:
        return None
    return {"regular": "medium", "big": "large"}.get(m.group(1), m.group(1))


def find_quantity(text: str) -> int:
    m = re.search(r"\b(\d+|" + "|".join(_NUMBERS) + r")\b", text)
    if not m:
        return 1
    word = m.group(1)
    qty = int(word) if word.isdigit() else _NUMBERS[word]
    return max(1, min(qty, MAX_QUANTITY))


def find_mentions(text: str) -> list[Mention]:
    """Every pizza named in ``text``, e.g. "two large pepperoni and a small margherita"."""
    mentions: list[Mention] = []
    # "with" is not a separator: "pepperoni with extra cheese" is one pizza, not two.
    for segment in re.split(r",|;|\band\b|\bplus\b|\balso\b", text):
        # "ham and pineapple" was split apart above; the "pineapple" alias still finds it.
        found = find_pizza(segment)
        if found is None:
            continue
        pizza, rest = found
        mentions.append(Mention(pizza, find_size(rest), find_quantity(rest)))
    return mentions
