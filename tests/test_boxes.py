"""Box codec: LION/Shikra text format, tolerant parsing, pixel mapping."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lion_ros.api import GroundedBox
from lion_ros.boxes import (
    DEFAULT_CODEC,
    BoxCodec,
    PhraseSpan,
    denormalize_box,
    normalize_box,
)

codec = DEFAULT_CODEC
TOL = 0.0005 + 1e-9  # half of the 3rd decimal, plus float noise


# --- formatting ---------------------------------------------------------------------------


def test_format_matches_playground_output() -> None:
    assert codec.format_answer([(0.44, 0.06, 0.65, 0.3667)]) == "Answer: [0.440,0.060,0.650,0.367]"


def test_several_boxes_share_one_bracket() -> None:
    text = codec.format_boxes([(0.1, 0.2, 0.3, 0.4), (0, 0, 1, 1)])
    assert text == "[0.100,0.200,0.300,0.400;0.000,0.000,1.000,1.000]"


def test_format_clamps_and_orders_like_shikra() -> None:
    assert codec.format_boxes([(0.5, 1.2, -0.1, 0.25)]) == "[0.000,0.250,0.500,1.000]"


@pytest.mark.parametrize("bad", [[], [(0.1, 0.2, 0.3)], [(0.1, float("nan"), 0.3, 0.4)]])
def test_format_rejects_bad_boxes(bad: list) -> None:
    with pytest.raises(ValueError):
        codec.format_boxes(bad)


def test_decimals_is_tunable() -> None:
    assert BoxCodec(decimals=2).format_boxes([(0.123, 0.2, 0.3, 0.4)]) == "[0.12,0.20,0.30,0.40]"


def test_grounded_caption_puts_boxes_after_phrases() -> None:
    caption = "a red cup next to a bowl"
    spans = [
        PhraseSpan(19, 24, [(0.5, 0.5, 0.6, 0.7)]),  # unordered on purpose
        PhraseSpan(0, 9, [(0.1, 0.2, 0.3, 0.4)]),
    ]
    assert codec.format_grounded_caption(caption, spans) == (
        "a red cup[0.100,0.200,0.300,0.400] next to a bowl[0.500,0.500,0.600,0.700]"
    )


@pytest.mark.parametrize("spans", [[(0, 30)], [(5, 5)], [(0, 9), (4, 12)]])
def test_grounded_caption_rejects_bad_spans(spans: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        codec.format_grounded_caption(
            "a red cup next to a bowl", [PhraseSpan(s, e, [(0, 0, 1, 1)]) for s, e in spans]
        )


# --- parsing: examples --------------------------------------------------------------------


def test_rec_answer_uses_default_phrase_and_pixels() -> None:
    # The playground draws the box by multiplying by img.width / img.height.
    boxes = codec.parse("Answer: [0.440,0.060,0.650,0.367]", 640, 480, "the dog on the left")
    assert len(boxes) == 1
    box = boxes[0]
    assert box.phrase == "the dog on the left"
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((281.6, 28.8, 416.0, 176.16))
    assert box.score == 1.0


def test_grounded_caption_ties_boxes_to_phrases() -> None:
    text = (
        "A man[0.1,0.1,0.4,0.9] in a blue shirt[0.15,0.3,0.35,0.6] is holding the old "
        "umbrella[0.2,0.0,0.6,0.3], next to two dogs[0.5,0.5,0.6,0.9;0.7,0.5,0.8,0.9]."
    )
    phrases = [phrase for phrase, _ in codec.parse_normalized(text)]
    assert phrases == ["man", "blue shirt", "old umbrella", "two dogs", "two dogs"]


def test_consecutive_brackets_share_the_phrase() -> None:
    found = codec.parse_normalized("two cats[0.1,0.1,0.2,0.2], [0.3,0.3,0.4,0.4] and a rug")
    assert [phrase for phrase, _ in found] == ["two cats", "two cats"]


def test_box_after_a_boundary_word_falls_back_to_default() -> None:
    found = codec.parse_normalized("It is at [0.1,0.1,0.2,0.2].", default_phrase="the cup")
    assert found == [("the cup", (0.1, 0.1, 0.2, 0.2))]


def test_phrase_length_is_bounded() -> None:
    text = "one two three four five six seven eight[0.1,0.1,0.2,0.2]"
    phrase = BoxCodec(max_phrase_words=3).parse_normalized(text)[0][0]
    assert phrase == "six seven eight"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[ 0.1 , 0.2 ,0.3,\t0.4 ]", (0.1, 0.2, 0.3, 0.4)),
        ("[0. 440,0.060,0.650,0.367]", (0.44, 0.06, 0.65, 0.367)),  # detokeniser spaces
        ("[0.3,0.4,0.1,0.2]", (0.1, 0.2, 0.3, 0.4)),  # unordered corners
        ("[-0.2,0.5,1.7,0.9]", (0.0, 0.5, 1.0, 0.9)),  # clamped
        ("[.5,0,1,1e0]", (0.5, 0.0, 1.0, 1.0)),
        ("[[0.1,0.2,0.3,0.4]", (0.1, 0.2, 0.3, 0.4)),  # unbalanced garbage around
        ("junk]]x[0.1,0.2,0.3,0.4]]]", (0.1, 0.2, 0.3, 0.4)),
    ],
)
def test_tolerant_parsing(text: str, expected: tuple[float, ...]) -> None:
    found = codec.parse_normalized(text)
    assert len(found) == 1
    assert found[0][1] == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "no boxes here",
        "[0.1,0.2,0.3]",  # three numbers
        "[0.1,0.2,0.3,0.4,0.5]",  # five numbers
        "[0.1,0.2,0.1,0.6]",  # zero width
        "[0.1,0.5,0.3,0.5]",  # zero height
        "[1.5,1.2,2.0,3.0]",  # clamps to a point
        "[nan,0.1,0.5,0.5]",
        "[inf,0.1,0.5,0.5]",
        "[1e999,0,1,1]",
        "[0.1,0.2,0.3,0x4]",
        "[1_0,0,1,1]",
        "[0.1.2,0.2,0.3,0.4]",
        "[__import__('os').getcwd(),0,1,1]",
        "[a, b, c, d]",
        "[]",
    ],
)
def test_invalid_boxes_are_dropped(text: str) -> None:
    assert codec.parse_normalized(text) == []


def test_valid_and_invalid_groups_in_one_bracket() -> None:
    found = codec.parse_normalized("cats[0.1,0.1,0.2,0.2;oops;0.5,0.5,0.5,0.9;0.3,0.3,0.4,0.4]")
    assert [box for _, box in found] == [(0.1, 0.1, 0.2, 0.2), (0.3, 0.3, 0.4, 0.4)]


def test_parse_returns_api_type() -> None:
    boxes = codec.parse("a cup[0,0,0.5,0.5]", 100, 50)
    assert boxes == [GroundedBox("cup", 0.0, 0.0, 50.0, 25.0)]


# --- pixel helpers ------------------------------------------------------------------------


def test_normalize_and_denormalize_use_width_for_x_and_height_for_y() -> None:
    assert normalize_box((64, 48, 320, 240), 640, 480) == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert denormalize_box((0.1, 0.1, 0.5, 0.5), 640, 480) == pytest.approx((64, 48, 320, 240))
    assert normalize_box((700, -5, 10, 100), 640, 480) == pytest.approx((10 / 640, 0, 1, 100 / 480))


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-1, 5), (float("nan"), 5)])
def test_bad_image_size(size: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        normalize_box((0, 0, 1, 1), *size)
    with pytest.raises(ValueError):
        codec.parse("[0,0,1,1]", *size)


# --- properties ---------------------------------------------------------------------------



@st.composite
def norm_boxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    # At least 0.002 wide/high so the 3-decimal form is never degenerate.
    x1 = draw(st.floats(0.0, 0.998))
    y1 = draw(st.floats(0.0, 0.998))
    x2 = draw(st.floats(x1 + 0.002, 1.0))
    y2 = draw(st.floats(y1 + 0.002, 1.0))
    return x1, y1, x2, y2


_sizes = st.one_of(st.integers(1, 8000), st.floats(0.5, 8000.0))
_words = st.sampled_from(["cup", "red", "dog", "small", "table", "kite", "blue", "person"])
_phrases = st.lists(_words, min_size=1, max_size=3).map(" ".join)
_box_lists = st.lists(norm_boxes(), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(norm_boxes(), min_size=1, max_size=6), _sizes, _sizes)
def test_round_trip_in_pixels(boxes: list, width: float, height: float) -> None:
    pixel_boxes = [denormalize_box(b, width, height) for b in boxes]
    text = codec.format_answer([normalize_box(b, width, height) for b in pixel_boxes])
    parsed = codec.parse(text, width, height, "expr")
    assert len(parsed) == len(boxes)
    for got, want in zip(parsed, pixel_boxes):
        assert got.phrase == "expr"
        for value, target, scale in zip(
            (got.x1, got.y1, got.x2, got.y2), want, (width, height, width, height)
        ):
            assert abs(value - target) <= TOL * scale + 1e-9 * scale


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_phrases, _box_lists), min_size=1, max_size=5))
def test_grounded_caption_round_trip(items: list) -> None:
    caption, spans = "", []
    for i, (phrase, boxes) in enumerate(items):
        prefix = "A " if i == 0 else " next to the "
        start = len(caption) + len(prefix)
        caption += prefix + phrase
        spans.append(PhraseSpan(start, len(caption), boxes))
    caption += "."
    parsed = codec.parse_normalized(codec.format_grounded_caption(caption, spans))
    expected = [(phrase, box) for phrase, boxes in items for box in boxes]
    assert [p for p, _ in parsed] == [p for p, _ in expected]
    for (_, got), (_, want) in zip(parsed, expected):
        assert max(abs(a - b) for a, b in zip(got, want)) <= TOL


def _assert_valid(found: list) -> None:
    for phrase, (x1, y1, x2, y2) in found:
        assert isinstance(phrase, str)
        assert all(math.isfinite(v) for v in (x1, y1, x2, y2))
        assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="[];,.0123456789-+eEnaif x")))
def test_garbage_never_raises_and_yields_only_valid_boxes(text: str) -> None:
    _assert_valid(codec.parse_normalized(text, default_phrase="d"))
    for box in codec.parse(text, 33, 77):
        assert 0 <= box.x1 < box.x2 <= 33 and 0 <= box.y1 < box.y2 <= 77


_no_closing = st.text(st.characters(blacklist_characters="]"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_no_closing, _box_lists), min_size=1, max_size=4), _no_closing)
def test_boxes_embedded_in_random_text_are_found(chunks: list, tail: str) -> None:
    # Without "]" the noise cannot close a bracket of its own, so exactly our boxes come back.
    text = "".join(noise + codec.format_boxes(boxes) for noise, boxes in chunks) + tail
    found = codec.parse_normalized(text)
    _assert_valid(found)
    expected = [box for _, boxes in chunks for box in boxes]
    assert len(found) == len(expected)
    for (_, got), want in zip(found, expected):
        assert max(abs(a - b) for a, b in zip(got, want)) <= TOL
