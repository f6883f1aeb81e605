"""Sentence splitting, so the first sentence can be heard while the rest is synthesized."""

from __future__ import annotations

import re

# A sentence ends at . ! ? or an ellipsis, possibly followed by closing quotes or brackets,
# then whitespace. Newlines end a sentence too: replies often arrive as lists.
_BOUNDARY = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+|\s*\n\s*")
# Titles before a name; splitting after them would make the name a sentence of its own,
# with a falling pitch on "Mr." and a pause.
# A clause ends at , ; or : followed by whitespace (not "3,500" or "10:30").
_CLAUSE = re.compile(r"[,;:]\s+")
# The first piece is only split off a sentence when both halves have this many words: a
# shorter piece costs a pause in the voice for almost no time saved.
MIN_CLAUSE_WORDS = 3
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


def speech_pieces(text: str) -> list[str]:
    """What to synthesise one after another: the sentences, with the first one's opening
    clause on its own, so the first audio comes after a few words rather than a sentence.

    Only the first sentence is split: once audio plays, the next sentence renders (at
    about 1/15 real time) while the previous one is heard, so whole sentences keep the
    voice's intonation without making anyone wait.
    """
    pieces = split_sentences(text)
    if not pieces:
        return pieces
    first = pieces[0]
    for match in _CLAUSE.finditer(first):
        head, tail = first[:match.end()].strip(), first[match.end():].strip()
        if len(head.split()) >= MIN_CLAUSE_WORDS:
            if len(tail.split()) >= MIN_CLAUSE_WORDS:
                return [head, tail, *pieces[1:]]
            break
    return pieces
