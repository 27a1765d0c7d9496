"""Clean extracted fact lists: normalise each item, drop duplicates and non-visual items, count every drop.

Normalising keeps the wording (the judge reads it) but removes what carries no content: surrounding
quotes, math dollars, repeated spaces and a trailing full stop or comma. Two items are duplicates when
they agree after also ignoring case, spaces and degree marks ("AB = 5", "$AB=5$."). An item the problem
text already states word for word is dropped ("stated_in_problem"): the question gives it, so stating
it proves nothing about reading the figure.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

ITEM_DROP_REASONS = ("empty", "too_long", "duplicate", "stated_in_problem", "over_max_items")
_QUOTES = "\"'`“”‘’"
_SPACES = re.compile(r"\s+")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\bdegrees?\b", re.IGNORECASE)
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|\S")


def normalise_item(item: str) -> str:
    """The item as written to the record: NFKC, no wrapping quotes or $...$, one space between words."""
    text = unicodedata.normalize("NFKC", item).strip()
    while len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if text.startswith("$") and text.endswith("$") and text.count("$") == 2:
        text = text[1:-1]
    return _SPACES.sub(" ", text).strip().rstrip(".,;").strip()


def comparison_key(text: str) -> str:
    """What two items must share to count as the same fact: their tokens (numbers, words, symbols), with case,
    spacing, math dollars, degree marks and sentence punctuation ignored."""
    text = _DEGREES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).replace("$", " ")
    return " ".join(token for token in _TOKEN.findall(text) if token not in ".,;:")


def clean_items(
    items: list[str], problem: str, max_items: int, max_chars: int, drop_stated_in_problem: bool = True
) -> tuple[list[str], Counter]:
    """Normalised, de-duplicated items (first occurrence kept, order kept) and the count of each drop reason."""
    kept, seen, dropped = [], set(), Counter()
    problem_key = f" {comparison_key(problem)} "
    for item in items:
        text = normalise_item(item)
        key = comparison_key(text)
        if not key:
            dropped["empty"] += 1
        elif len(text) > max_chars:
            dropped["too_long"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        elif drop_stated_in_problem and f" {key} " in problem_key:
            dropped["stated_in_problem"] += 1
        elif len(kept) >= max_items:  # counts distinct facts lost: its repeats count as duplicates
            seen.add(key)
            dropped["over_max_items"] += 1
        else:
            seen.add(key)
            kept.append(text)
    return kept, dropped
