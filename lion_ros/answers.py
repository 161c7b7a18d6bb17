"""Reading what a short answer states: the verdict of a yes/no answer, the count of a counting
answer. One definition for the evaluation's strict metrics and for any caller that turns an
answer's text into a typed result (pure Python, no model).

Both readers are strict on purpose: an answer that does not state a verdict or a count yields
None, never a guess, so a model that stops saying "yes"/"no" or a number shows up as wrong.
"""
from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["yes", "no"]

_BOX_GROUP = re.compile(r"\[[^\[\]]*\]")
# Whole words only, so "north", "nothing" or "yesterday" are never read as a verdict.
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_VERDICTS: frozenset[str] = frozenset(("yes", "no"))

# Number words a count may be written as. Twenty covers every count the synthetic scenes and
# the robot's tabletop questions ask for; larger counts come as digits.
NUMBER_WORDS: dict[str, int] = {
    word: value for value, word in enumerate((
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
    ))
}
# A decimal is matched whole so that "2.5" is read as a non-count, not as the counts 2 and 5.
_COUNT_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def strip_boxes(text: str) -> str:
    """`text` with every bracketed box group ("[0.12,0.40,0.31,0.77]") replaced by a space."""
    return _BOX_GROUP.sub(" ", text)


def parse_verdict(text: str) -> Verdict | None:
    """The verdict an answer states: "yes", "no", or None when it states none.

    An answer states a verdict when its first or its last word is "yes" or "no" (any case,
    punctuation, numbers and boxes aside): "Yes, it is." and "no" open with it; the reasoned
    form "the cup 23, the red ball 61: left, yes" and the grounded form "the cup[...] is left of
    the ball[...]: no" close with it, so a "yes"/"no" inside the evidence is not the verdict.
    An answer that opens with one verdict and closes with the other ("no ... yes") states none,
    as does one without either word at those places ("pink", "not sure", "nothing")."""
    words = _WORD.findall(strip_boxes(text).lower())
    ends = {w for w in (words[:1] + words[-1:]) if w in _VERDICTS}
    if len(ends) != 1:
        return None
    return "yes" if "yes" in ends else "no"


def parse_count(text: str) -> int | None:
    """The count an answer states: the one number it contains, as digits ("3", "12") or as a
    word from "zero" to "twenty" ("three"), or None.

    None when the answer holds no number ("a few", "many", "none"), more than one different
    number ("3 or 4"), or a non-integer ("2.5"). Boxes are ignored."""
    values: set[int] = set()
    for token in _COUNT_TOKEN.findall(strip_boxes(text).lower()):
        if token[0].isdigit():
            if "." in token:
                return None
            values.add(int(token))
        elif token in NUMBER_WORDS:
            values.add(NUMBER_WORDS[token])
    return values.pop() if len(values) == 1 else None
