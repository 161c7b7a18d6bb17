"""Box-constrained decoding: region answers that always parse as boxes.

A REC answer is `Answer: [x1,y1,x2,y2]` (several boxes `;`-separated in one bracket), each
coordinate `0.ddd` or `1.000`. An under-trained model, or a real one on an unusual question,
may write anything; for a robot a region question must come back with a box. `BoxConstraint`
is a logits processor (`lion_ros.model.generation.LogitsProcessor`) that forbids every token
which would not keep the decoded text a prefix of

    " "? "Answer:" " "? "[" BOX (";" BOX)* "]" EOS
    BOX = X1 "," Y1 "," X2 "," Y2      with X2 > X1 and Y2 > Y1

so the text that comes out parses (`BoxCodec.parse`) into boxes of positive size. The optional
spaces are where SentencePiece puts word starts ("▁Answer", "▁["); the first one is what a
detokeniser drops at the start of a text. Strictly increasing corners rule out the empty boxes
the parser would drop.

Tokens are simulated character by character through a small automaton, so multi-character
pieces of a real T5 vocabulary ("▁[", "0.", "44") work as well as the single-character pieces
of the nano tokenizers. Only tokens made of the grammar's characters are candidates (a few
hundred out of T5's 32k), and the allowed tokens of each automaton state are computed once and
cached in `BoxAutomaton`, which a runtime keeps for all requests.

The length budget: a token is only allowed if the answer can still be finished within
`max_new_tokens`, counting one token per remaining character (an upper bound whenever the
vocabulary has single-character tokens, which `BoxAutomaton` checks). When even the shortest
completion does not fit, the constraint still keeps the text a valid prefix.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DIGITS = "0123456789"
SPACE = "\u2581"  # SentencePiece's word-start mark, a space once decoded


@dataclass(frozen=True)
class BoxGrammar:
    """The answer form the constraint enforces (Shikra / LION REC answers)."""

    prefix: str = "Answer:"
    max_boxes: int = 8  # "find all" answers hold several boxes; the model decides how many

    def __post_init__(self) -> None:
        if self.max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {self.max_boxes}")

    @property
    def alphabet(self) -> frozenset[str]:
        return frozenset(self.prefix + " [];,." + DIGITS)


# Automaton states (hashable, small):
#   ("lead", i)                         next literal item i of `_literal`
#   ("box", boxes_done, coord, number, x1, y1)
#                                       `number`: characters of the coordinate being written;
#                                       x1 / y1: the finished lower corners ("" until written)
#   ("end",)                            after "]": only EOS
State = tuple
_END: State = ("end",)
_NUMBER_LENGTH = 5  # "0.ddd"
_COORDS = 4


class BoxAutomaton:
    """The grammar as a character automaton over a tokenizer's vocabulary, with per-state caches.

    token_texts[i] is token i's text as decoded (SentencePiece "▁" as a space), None for special
    tokens and ids the tokenizer does not have; its length is the model's vocabulary size.
    """

    def __init__(
        self, token_texts: Sequence[str | None], eos_token_id: int, grammar: BoxGrammar = BoxGrammar()
    ) -> None:
        self.grammar = grammar
        self.vocab_size = len(token_texts)
        self.eos_token_id = eos_token_id
        # Literal items of the prefix: (character, optional).
        self._literal = [(" ", True)] + [(c, False) for c in grammar.prefix] + [(" ", True), ("[", False)]
        alphabet = grammar.alphabet
        self._candidates = [
            (i, text) for i, text in enumerate(token_texts) if text and i != eos_token_id and set(text) <= alphabet
        ]
        singles = {text.strip() for _, text in self._candidates if len(text.strip()) == 1}
        missing = sorted((alphabet - {" "}) - singles)
        if missing:
            raise ValueError(
                f"the vocabulary has no single-character token for {missing}: box answers cannot be "
                "constrained with it"
            )
        self._options: dict[State, tuple[torch.Tensor, torch.Tensor]] = {}
        self._transitions: dict[State, dict[int, State]] = {}

    @classmethod
    def from_tokenizer(
        cls, tokenizer, vocab_size: int, eos_token_id: int, grammar: BoxGrammar = BoxGrammar()
    ) -> BoxAutomaton:
        """From a transformers tokenizer; `vocab_size` is the model's (it may exceed the tokenizer's)."""
        special = set(tokenizer.all_special_ids)
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        texts: list[str | None] = [
            None if i in special or piece is None else piece.replace(SPACE, " ") for i, piece in enumerate(pieces)
        ]
        texts += [None] * (vocab_size - len(texts))
        return cls(texts, eos_token_id, grammar)

    @property
    def start(self) -> State:
        return ("lead", 0)

    def accepts(self, state: State) -> bool:
        return state == _END

    def distance(self, state: State) -> int:
        """Characters still needed to reach the end (the fewest, whatever is chosen)."""
        if state[0] == "lead":
            literal = sum(1 for _, optional in self._literal[state[1] :] if not optional)
            return literal + self._box_length()
        if state[0] == "box":
            _, _, coord, number, _, _ = state
            return (_NUMBER_LENGTH - len(number)) + (_COORDS - 1 - coord) * (1 + _NUMBER_LENGTH) + 1
        return 0

    def transitions(self, state: State) -> dict[int, State]:
        """Allowed token id -> state after it (EOS excluded; it is allowed exactly at the end)."""
        if state not in self._transitions:
            allowed = {}
            for token_id, text in self._candidates:
                after: State | None = state
                for char in text:
                    after = self._step(after, char)
                    if after is None:
                        break
                if after is not None:
                    allowed[token_id] = after
            self._transitions[state] = allowed
        return self._transitions[state]

    def options(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed token ids [K] and the characters each leaves to write [K] (EOS: -1 at the end)."""
        if state not in self._options:
            allowed = self.transitions(state)
            ids = list(allowed)
            distances = [self.distance(after) for after in allowed.values()]
            if self.accepts(state):
                ids.append(self.eos_token_id)
                distances.append(-1)
            self._options[state] = (torch.tensor(ids, dtype=torch.long), torch.tensor(distances, dtype=torch.long))
        return self._options[state]

    def _box_length(self) -> int:
        return _COORDS * _NUMBER_LENGTH + (_COORDS - 1) + 1  # numbers, commas, "]"

    def _step(self, state: State, char: str) -> State | None:
        if state[0] == "lead":
            i = state[1]
            while i < len(self._literal):
                expected, optional = self._literal[i]
                if char == expected:
                    return ("lead", i + 1) if i + 1 < len(self._literal) else ("box", 0, 0, "", "", "")
                if not optional:
                    return None
                i += 1
            return None
        if state[0] == "box":
            return self._step_box(state, char)
        return None

    def _step_box(self, state: State, char: str) -> State | None:
        _, boxes, coord, number, x1, y1 = state
        if len(number) < _NUMBER_LENGTH:
            number += char
            lower = {2: x1, 3: y1}.get(coord, "")
            return ("box", boxes, coord, number, x1, y1) if _viable(number, lower, coord >= 2) else None
        if coord < _COORDS - 1:
            if char != ",":
                return None
            return (
                "box", boxes, coord + 1, "",
                number if coord == 0 else x1,
                number if coord == 1 else y1,
            )
        if char == "]":
            return _END
        if char == ";" and boxes + 1 < self.grammar.max_boxes:
            return ("box", boxes + 1, 0, "", "", "")
        return None


def _viable(number: str, lower: str, may_be_one: bool) -> bool:
    """`number` is a prefix of a coordinate ("0.ddd", or "1.000" when may_be_one) that can still
    end strictly above `lower` (a finished coordinate, "" for none)."""
    for i, char in enumerate(number):
        if i == 0:
            ok = char == "0" or (char == "1" and may_be_one)
        elif i == 1:
            ok = char == "."
        else:
            ok = char in DIGITS and (number[0] == "0" or char == "0")
        if not ok:
            return False
    largest = number + ("1.000" if number[:1] == "1" or (not number and may_be_one) else "0.999")[len(number) :]
    return largest > lower  # fixed-width decimals compare as strings


Scores = torch.Tensor


class BoxConstraint:
    """Per-request logits processor over a shared `BoxAutomaton`.

    Rows are tracked by their token history, so beam search may reorder them freely. A row whose
    history left the grammar (it finished, or the budget fallback let it through) is not touched.
    """

    def __init__(self, automaton: BoxAutomaton, max_new_tokens: int) -> None:
        self.automaton = automaton
        self.max_new_tokens = max_new_tokens
        self._states: dict[tuple[int, ...], State | None] = {(): automaton.start}

    def __call__(self, generated: torch.Tensor, scores: Scores) -> Scores:
        """generated [N, t] tokens so far, scores [N, vocab] -> scores with forbidden tokens at -inf."""
        t = generated.shape[1]
        budget = self.max_new_tokens - t - 1  # tokens left after this one, one of them for EOS
        mask = torch.zeros_like(scores, dtype=torch.bool)
        constrained = torch.zeros(scores.shape[0], dtype=torch.bool)
        for row, history in enumerate(generated.tolist()):
            state = self._state(tuple(history))
            if state is None:
                continue
            ids, distances = self.automaton.options(state)
            fits = distances < budget  # EOS (-1) always fits
            ids = ids[fits] if bool(fits.any()) else ids
            mask[row, ids.to(scores.device)] = True
            constrained[row] = True
        mask[~constrained.to(scores.device)] = True
        return scores.masked_fill(~mask, float("-inf"))

    def _state(self, history: tuple[int, ...]) -> State | None:
        if history not in self._states:
            parent = self._state(history[:-1])
            self._states[history] = (
                None if parent is None else self.automaton.transitions(parent).get(history[-1])
            )
        return self._states[history]
