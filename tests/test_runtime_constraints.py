"""Box-constrained decoding: whatever the scores, the text is a parsable box answer."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_lion import tiny_tokenizers
from transformers import T5Tokenizer

from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.runtime.constraints import BoxAutomaton, BoxConstraint, BoxGrammar
from lion_ros.tokenization import LionTokenizers

EOS = 1


@pytest.fixture(scope="module")
def nano() -> LionTokenizers:
    return tiny_tokenizers()


@pytest.fixture(scope="module")
def sentencepiece() -> T5Tokenizer:
    """A T5-style SentencePiece vocabulary with multi-character pieces, as the real one has."""
    pieces = ["▁Answer", "▁An", "swer", ":", "▁[", "[", "]", ",", ";", ".", "0.", "1.", "44", "000", "▁0", "▁a", "▁cup"]
    pieces += list("0123456789") + list("Answer")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(p, -3.0 - 0.01 * i) for i, p in enumerate(pieces)]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab)


def _decode_with(automaton: BoxAutomaton, max_new_tokens: int, seed: int, beams_like_rows: int = 3) -> list[list[int]]:
    """Greedy over random scores through the constraint, rows stopping at EOS."""
    constraint = BoxConstraint(automaton, max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    rows = [[] for _ in range(beams_like_rows)]
    for _ in range(max_new_tokens):
        history = torch.tensor(rows)  # finished rows included: they go on repeating EOS, as in a search
        scores = constraint(history, torch.randn(len(rows), automaton.vocab_size, generator=generator) * 5)
        for row, token in zip(rows, scores.argmax(-1).tolist()):
            row.append(EOS if row and row[-1] == EOS else token)  # finished rows repeat EOS
    return [row[: row.index(EOS)] if EOS in row else row for row in rows]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), max_new_tokens=st.integers(29, 60))
def test_nano_vocabulary_always_yields_valid_boxes(nano: LionTokenizers, seed: int, max_new_tokens: int) -> None:
    automaton = _nano_automaton(nano)
    for tokens in _decode_with(automaton, max_new_tokens, seed):
        text = nano.t5.decode(tokens, skip_special_tokens=True)
        boxes = DEFAULT_CODEC.parse_normalized(text)
        assert text.startswith("Answer:") and boxes, text
        assert all(x2 > x1 and y2 > y1 for _, (x1, y1, x2, y2) in boxes)
        assert len(boxes) == text.count(";") + 1  # every box in the bracket is valid


_NANO_AUTOMATA: dict[int, BoxAutomaton] = {}


def _nano_automaton(nano: LionTokenizers) -> BoxAutomaton:
    # Cached across hypothesis examples: one automaton serves every request, as in a runtime.
    return _NANO_AUTOMATA.setdefault(id(nano), BoxAutomaton.from_tokenizer(nano.t5, len(nano.t5) + 5, EOS))


def test_sentencepiece_pieces_are_simulated_character_by_character(sentencepiece: T5Tokenizer) -> None:
    automaton = BoxAutomaton.from_tokenizer(sentencepiece, len(sentencepiece), EOS)
    ids = sentencepiece.convert_tokens_to_ids
    start = automaton.transitions(automaton.start)
    assert {ids("▁Answer"), ids("▁An"), ids("▁"), ids("A")} <= set(start)
    assert ids("swer") not in start and ids("▁[") not in start and ids("0.") not in start
    after_prefix = automaton.transitions(start[ids("▁Answer")])[ids(":")]
    allowed = automaton.transitions(after_prefix)
    assert ids("▁[") in allowed and ids("[") in allowed and ids("▁a") not in allowed
    in_box = allowed[ids("▁[")]
    assert ids("0.") in automaton.transitions(in_box) and ids("1.") not in automaton.transitions(in_box)  # x1 < 1
    # Whole answers through multi-character pieces parse.
    for seed in range(5):
        for tokens in _decode_with(automaton, 40, seed):
            text = sentencepiece.decode(tokens, skip_special_tokens=True)
            assert DEFAULT_CODEC.parse_normalized(text), text


def test_second_corner_must_exceed_the_first() -> None:
    texts = [None, None, *"0123456789", "Answer", ":", " ", "[", "]", ",", ";", ".", "A", "n", "s", "w", "e", "r"]
    automaton = BoxAutomaton(texts, EOS, BoxGrammar(max_boxes=1))
    state = automaton.start
    for char in "Answer:[0.999,0.500,":
        state = automaton.transitions(state)[texts.index(char)]
    allowed = {texts[i] for i in automaton.transitions(state)}
    assert allowed == {"1"}  # only 1.000 is above 0.999
    for char in "1.000,0.5":
        state = automaton.transitions(state)[texts.index(char)]
    assert {texts[i] for i in automaton.transitions(state)} == set("0123456789")
    state = automaton.transitions(state)[texts.index("0")]
    assert {texts[i] for i in automaton.transitions(state)} == set("123456789")  # 0.500 is not above 0.500
    state = automaton.transitions(state)[texts.index("1")]
    ids, _ = automaton.options(state)
    assert {texts[i] for i in ids.tolist()} == {"]"}  # max_boxes=1: no ";"
    state = automaton.transitions(state)[texts.index("]")]
    assert automaton.options(state)[0].tolist() == [EOS]


def test_budget_forces_the_shortest_completion(nano: LionTokenizers) -> None:
    automaton = _nano_automaton(nano)
    shortest = automaton.distance(automaton.start) + 1  # characters + EOS
    for tokens in _decode_with(automaton, shortest, seed=3):
        assert DEFAULT_CODEC.parse_normalized(nano.t5.decode(tokens, skip_special_tokens=True))


def test_vocabulary_without_box_characters_is_rejected() -> None:
    with pytest.raises(ValueError, match="single-character token"):
        BoxAutomaton([None, None, "Answer", ":", "[", "]"], EOS)


def test_rows_are_tracked_by_history_so_beams_may_reorder(nano: LionTokenizers) -> None:
    automaton = _nano_automaton(nano)
    constraint = BoxConstraint(automaton, 40)
    answer = nano.t5("Answer: [0.1", add_special_tokens=False).input_ids
    rng = random.Random(0)
    histories = [answer[:k] for k in range(len(answer) + 1)]
    rng.shuffle(histories)
    for history in histories:  # one row at a time, in any order, from the shared cache
        scores = constraint(torch.tensor([history]), torch.zeros(1, automaton.vocab_size))
        if len(history) < len(answer):
            assert scores[0, answer[len(history)]] == 0, history
