"""The phrasing grammar (lion_ros.data.phrasing): held out by production, never seen in training,
and only the wording changes: the same scene asks about the same objects with the same answers."""
from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from lion_ros.data import phrasing
from lion_ros.data.phrasing import FRAMES, NOUNS, OPENERS, RELATIONS, TAILS, Phraser, Production, all_productions
from lion_ros.data.synthetic import (
    CATEGORIES,
    COLOURS,
    PLURALS,
    SIZES,
    SyntheticConfig,
    SyntheticDataset,
    generate_samples,
    render_scene,
)

SLOTS = {"x": "the red cup", "xs": "cups", "a": "the cup", "b": "the small bowl", "d": "the red object",
         "box": "[0.100,0.200,0.300,0.400]"}


def _draw_many(held_out: bool, n: int) -> set[str]:
    used: set[str] = set()
    for i in range(n):
        phraser = Phraser.for_sample(f"unit/{i}", held_out)
        rel = list(RELATIONS)[i % len(RELATIONS)]
        phraser.question(list(FRAMES)[i % len(FRAMES)], {**SLOTS, "rel": phraser.relation(rel)})
        phraser.noun(plural=bool(i % 2))
        used.update(phraser.used)
    return used


def test_every_choice_point_has_training_and_held_out_productions_with_unique_ids() -> None:
    productions = all_productions()
    ids = [p.id for p in productions]
    assert len(set(ids)) == len(ids)
    groups = [*FRAMES.values(), *RELATIONS.values(), NOUNS, OPENERS, *phrasing.CLOSERS.values(), TAILS,
              *phrasing.NOISE.values()]
    for group in groups:
        assert {p.held_out for p in group} == {False, True}, group[0].id
    frames = [p for group in FRAMES.values() for p in group]
    assert sum(p.held_out for p in frames) / len(frames) >= 0.4  # a large share of the wordings is test-only
    assert set(phrasing.CLOSER_OF_TASK) == set(FRAMES)
    with pytest.raises(ValueError, match="listed twice"):
        phrasing._point("x", ("a",), ("a",))


@pytest.mark.parametrize("held_out", [False, True])
def test_a_split_draws_every_production_of_its_own_side_and_none_of_the_other(held_out: bool) -> None:
    used = _draw_many(held_out, 6000)
    side = {p.id for p in all_productions() if p.held_out == held_out}
    assert used == side


def test_a_phraser_depends_only_on_its_key_and_rejects_unknown_names() -> None:
    texts = [Phraser.for_sample("scene/3", False).question("rec", SLOTS) for _ in range(2)]
    assert texts[0] == texts[1]
    assert len({Phraser.for_sample(f"scene/{i}", False).question("rec", SLOTS) for i in range(40)}) > 20
    with pytest.raises(ValueError, match="unknown phrasing task"):
        Phraser.for_sample("k", False).question("vqa", SLOTS)
    with pytest.raises(ValueError, match="needs the slot 'x'"):
        Phraser.for_sample("k", False).question("rec", {})
    with pytest.raises(ValueError, match="unknown relation"):
        Phraser.for_sample("k", False).relation("above")


# --- reading a question back to the productions it could come from --------------------------

def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "")).split())


def _alternation(texts: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(_norm(t)) for t in sorted(set(texts), key=len, reverse=True)) + ")"


_REL = _alternation(p.text for group in RELATIONS.values() for p in group)
_SIZE, _COLOUR, _CATEGORY = (f"(?:{'|'.join(words)})" for words in (SIZES, COLOURS, CATEGORIES))
_NOUN = _alternation(p.text for p in NOUNS)
_REF = rf"the (?:{_SIZE} )?(?:{_COLOUR} )?{_CATEGORY}"
_SLOT_PATTERNS = {
    "x": rf"{_REF}(?: {_REL} {_REF})?",
    "xs": rf"(?:{'|'.join(PLURALS.values())}|{_COLOUR} {_NOUN}s)",
    "a": _REF, "b": _REF, "rel": _REL,
    "d": rf"the (?:{_SIZE} )?(?:{_COLOUR} )?{_NOUN}",
    "box": r"[0-9 ]+",
}
_OPENER = _alternation(p.text for p in OPENERS)
_ENDING = _alternation([p.text for p in TAILS] + [p.text for group in phrasing.CLOSERS.values() for p in group])


def _frame_pattern(frame: Production) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", frame.text)
    body = " ".join(_SLOT_PATTERNS[part[1:-1]] if part.startswith("{") else re.escape(_norm(part))
                    for part in parts if _norm(part) or part.startswith("{"))
    return re.compile(rf"^(?:{_OPENER} )?{body}(?: {_ENDING})?$")


FRAME_PATTERNS = [(frame, _frame_pattern(frame)) for group in FRAMES.values() for frame in group]


def _frames_matching(question: str) -> list[Production]:
    return [frame for frame, pattern in FRAME_PATTERNS if pattern.match(_norm(question))]


def _contains(question: str, text: str) -> bool:
    return re.search(rf"(?:^| ){re.escape(_norm(text))}(?: |$)", _norm(question)) is not None


HELD_OUT_WORDS = [p.text for group in [*RELATIONS.values(), NOUNS, OPENERS, *phrasing.CLOSERS.values(), TAILS]
                  for p in group if p.held_out]


def test_no_training_question_is_worded_by_a_held_out_production() -> None:
    """Over thousands of train samples: every question reads back to a training frame and to no
    held-out one, contains no held-out synonym, noun, opener, closer or tail, and shows none of
    the held-out noise (capitals, repeated final marks, a comma glued to the next word)."""
    samples = list(SyntheticDataset("train", 200, SyntheticConfig(phrasing="grammar"), cache_size=1))
    assert len(samples) == 200 * 14
    for s in samples:
        frames = _frames_matching(s.question)
        assert frames and not any(f.held_out for f in frames), (s.question, [f.id for f in frames])
        assert not [w for w in HELD_OUT_WORDS if _contains(s.question, w)], s.question
        assert not re.search(r"[A-Z]{3,}", s.question) and not re.search(r"[.?!]{2,}$", s.question), s.question
        assert not re.search(r",[^\s\d]", s.question), s.question
        if s.task_name == "rec":
            assert _contains(s.question, s.regions[0].phrase)
    assert len({f.id for s in samples for f in _frames_matching(s.question)}) == sum(
        not p.held_out for group in FRAMES.values() for p in group)


def test_the_held_out_split_is_worded_only_by_held_out_frames() -> None:
    samples = list(SyntheticDataset("test", 60, SyntheticConfig(phrasing="heldout"), cache_size=1))
    for s in samples:
        frames = _frames_matching(s.question)
        assert frames and all(f.held_out for f in frames), (s.question, [f.id for f in frames])
    assert any(re.search(r"[A-Z]{3,}", s.question) for s in samples)  # held-out noise does occur


def test_only_the_wording_changes_between_templates_grammar_and_held_out() -> None:
    """Same scenes, same objects asked about, same answers (the reasoned spatial form included):
    the phrasing split can be compared with the template split question by question."""
    def content(phrasing_name: str) -> list[tuple]:
        config = SyntheticConfig(phrasing=phrasing_name, spatial_answer="reasoned", prompt_variety=False)
        return [(s.id, s.answer, s.task, s.task_name, [r.box for r in s.regions], s.count, s.yes_no, s.evidence)
                for s in SyntheticDataset("test", 12, config, cache_size=1)]

    def questions(phrasing_name: str) -> list[str]:
        return [s.question for s in SyntheticDataset("test", 12, SyntheticConfig(phrasing=phrasing_name), cache_size=1)]

    assert content("templates") == content("grammar") == content("heldout")
    worded = [questions(name) for name in ("templates", "grammar", "heldout")]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert sum(x != y for x, y in zip(worded[a], worded[b])) > 0.9 * len(worded[a])


def test_held_out_phrasings_are_refused_on_train_scenes_and_unknown_phrasings_fail() -> None:
    with pytest.raises(ValueError, match="held-out phrasings are for evaluation only"):
        SyntheticDataset("train", 1, SyntheticConfig(phrasing="heldout"))
    with pytest.raises(ValueError, match="held-out phrasings are for evaluation only"):
        generate_samples(render_scene(1, split="train"), phrasing="heldout")
    with pytest.raises(ValueError, match="phrasing must be one of"):
        SyntheticConfig(phrasing="free")
    with pytest.raises(ValueError, match="phrasing must be one of"):
        SyntheticConfig.from_dict({"phrasing": "grammer"})
    assert SyntheticConfig.from_dict({"phrasing": "grammar"}).phrasing == "grammar"
