"""Box codec: LION's text form of boxes (Shikra's `PlainBoxFormatter`) and its parser.

A box is written `[x1,y1,x2,y2]`, each coordinate normalised to [0, 1] by the ORIGINAL image
width (x) or height (y) with 3 decimals; several boxes share one bracket separated by `;`.
Because the eval transform squashes every image to a square, normalised coordinates mean the
same thing whatever the aspect ratio. REC answers read `Answer: [..]`; grounded captions put the
boxes right after their phrase: `a red cup[0.100,0.200,0.300,0.400] next to a bowl[...]`.

Parsing is regex plus `float()` on strings the regex already vetted, never `eval`: the text is
model output and must be treated as untrusted.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lion_ros.api import GroundedBox

NormBox = tuple[float, float, float, float]
"""(x1, y1, x2, y2) in [0, 1], x1 <= x2 and y1 <= y2."""

# Brackets whose content holds no other bracket: nested or unbalanced brackets in garbage
# then still expose any well-formed inner box.
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# No "nan"/"inf"/"1_0": float() accepts those, the box format never contains them.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class PhraseSpan:
    """A phrase of a caption, `caption[start:end]`, and the boxes that go right after it."""

    start: int
    end: int
    boxes: Sequence[NormBox]


@dataclass(frozen=True)
class BoxCodec:
    """Writes and reads boxes in LION's text format.

    The phrase attached to a parsed box is the text just before it, cut back to the last clause
    punctuation or boundary word and stripped of a leading determiner, so
    `a red cup[..] next to a bowl[..]` gives "red cup" and "bowl".
    """

    decimals: int = 3
    answer_prefix: str = "Answer: "
    # Words that end the noun phrase when walking back from a box ("... next to a bowl[..]").
    boundary_words: frozenset[str] = frozenset([
        "and", "or", "but", "with", "without", "next", "to", "near", "beside", "besides", "behind", "in", "on",
        "at", "under", "over", "above", "below", "by", "from", "into", "onto", "inside", "outside", "between",
        "among", "against", "around", "across", "along", "holding", "wearing", "carrying", "riding", "while",
        "is", "are", "was", "were", "who", "which", "that", "there", "where", "has", "have", "answer",
    ])
    determiners: frozenset[str] = frozenset(
        ["a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your", "our", "some"]
    )
    # Clause punctuation: the phrase never reaches across it.
    phrase_stops: str = ".,;:!?()\""
    max_phrase_words: int = 6

    def format_boxes(self, boxes: Sequence[Sequence[float]]) -> str:
        """`[x1,y1,x2,y2;...]` for normalised boxes (clamped to [0, 1] and ordered first)."""
        if not boxes:
            raise ValueError("format_boxes needs at least one box")
        return "[" + ";".join(
            ",".join(f"{v:.{self.decimals}f}" for v in _clean(box)) for box in boxes
        ) + "]"

    def format_answer(self, boxes: Sequence[Sequence[float]]) -> str:
        """REC / "find all" target, e.g. `Answer: [0.440,0.060,0.650,0.367]`.

        Shikra appends " ." after the boxes; LION's released model answers without it (the
        playground output), so we do too.
        """
        return self.answer_prefix + self.format_boxes(boxes)

    def format_grounded_caption(self, caption: str, spans: Sequence[PhraseSpan]) -> str:
        """Insert each span's boxes right after its phrase in `caption`."""
        pieces: list[str] = []
        cursor = 0
        for span in sorted(spans, key=lambda s: s.start):
            if not 0 <= span.start < span.end <= len(caption) or span.start < cursor:
                raise ValueError(
                    f"phrase span [{span.start}, {span.end}) is empty, outside the caption "
                    f"(length {len(caption)}) or overlaps the previous one"
                )
            pieces += [caption[cursor : span.end], self.format_boxes(span.boxes)]
            cursor = span.end
        pieces.append(caption[cursor:])
        return "".join(pieces)

    def parse_normalized(self, text: str, default_phrase: str = "") -> list[tuple[str, NormBox]]:
        """All valid boxes in `text` with their phrases, in normalised coordinates.

        Coordinates are clamped to [0, 1] and ordered; a group that is not exactly four numbers
        or whose box has zero width or height is dropped. `default_phrase` names boxes with no
        phrase of their own, e.g. the referring expression for an `Answer: [..]` REC output.
        Boxes in consecutive brackets with nothing wordy between them share a phrase.
        """
        found: list[tuple[str, NormBox]] = []
        previous_end = 0
        phrase = default_phrase
        for match in _BRACKET.finditer(text):
            between = text[previous_end : match.start()]
            previous_end = match.end()
            boxes = [box for group in match.group(1).split(";") if (box := _parse_box(group))]
            if not boxes:
                continue
            if _WORD.search(between) or not found:
                phrase = self._phrase_before(between) or default_phrase
            found += [(phrase, box) for box in boxes]
        return found

    def parse(
        self, text: str, width: float, height: float, default_phrase: str = ""
    ) -> list[GroundedBox]:
        """Like `parse_normalized`, with boxes in pixels of a `width` x `height` image."""
        return [
            GroundedBox(phrase, *denormalize_box(box, width, height))
            for phrase, box in self.parse_normalized(text, default_phrase)
        ]

    def _phrase_before(self, text: str) -> str:
        cut = max(text.rfind(stop) for stop in self.phrase_stops)
        words = text[cut + 1 :].split()
        phrase: list[str] = []
        for word in reversed(words[-self.max_phrase_words :]):
            if word.lower() in self.boundary_words:
                break
            phrase.insert(0, word)
        while phrase and phrase[0].lower() in self.determiners:
            phrase.pop(0)
        return " ".join(phrase)


def _clean(box: Sequence[float]) -> NormBox:
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box)}: {box!r}")
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box coordinates must be finite, got {box!r}")
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _parse_box(group: str) -> NormBox | None:
    # Whitespace is dropped before splitting so detokenisation artefacts like "0. 440" survive.
    parts = "".join(group.split()).split(",")
    if len(parts) != 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    values = [float(p) for p in parts]
    if not all(math.isfinite(v) for v in values):  # e.g. "1e999"
        return None
    box = _clean(values)
    return box if box[2] > box[0] and box[3] > box[1] else None


def normalize_box(box: Sequence[float], width: float, height: float) -> NormBox:
    """Pixel (x1, y1, x2, y2) of a `width` x `height` image to a clamped, ordered NormBox."""
    _check_size(width, height)
    x1, y1, x2, y2 = box
    return _clean((x1 / width, y1 / height, x2 / width, y2 / height))


def denormalize_box(box: Sequence[float], width: float, height: float) -> NormBox:
    """NormBox to pixel (x1, y1, x2, y2) of a `width` x `height` image."""
    _check_size(width, height)
    x1, y1, x2, y2 = _clean(box)
    return x1 * width, y1 * height, x2 * width, y2 * height


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width} x {height}")


DEFAULT_CODEC = BoxCodec()
