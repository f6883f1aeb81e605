"""Sentence splitting, so the first sentence can be heard while the rest is synthesized."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or an ellipsis, possibly followed by closing quotes or brackets,
# then whitespace. Newlines end a sentence too: replies often arrive as lists.
_BOUNDARY = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+|\s*\n\s*")
# Titles before a name; splitting after them would make the name a sentence of its own,
# with a falling pitch on "Mr." and a pause.
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "prof.", "vs.", "e.g.", "i.e."})


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    pending = ""
    for match in _BOUNDARY.finditer(text):
        piece = text[start:match.end()]
        start = match.end()
        last_word = piece.split()[-1].lower() if piece.split() else ""
        if last_word in _ABBREVIATIONS and "\n" not in match.group():
            pending += piece
            continue
        sentences.append(pending + piece)
        pending = ""
    sentences.append(pending + text[start:])
    return [s.strip() for s in sentences if s.strip()]
