"""The task router (lion_ros.prompts.infer_task) on how people ask: the labelled list in
tests/data/routing_phrasings.tsv, written independently of the phrasing grammar, and the grammar's
own questions (training and held-out productions)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lion_ros.api import TaskKind
from lion_ros.data.synthetic import SyntheticConfig, SyntheticDataset
from lion_ros.prompts import infer_task, matching_rule

PHRASINGS = Path(__file__).parent / "data" / "routing_phrasings.tsv"
KINDS = {"region": TaskKind.REGION, "image": TaskKind.IMAGE}


def read_phrasings(path: Path) -> list[tuple[str, TaskKind]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or fields[1] not in KINDS or not fields[0].strip():
            raise ValueError(f"{path}:{number}: expected '<phrasing> TAB region|image', got {line!r}")
        rows.append((fields[0], KINDS[fields[1]]))
    return rows


def test_the_list_is_large_balanced_and_has_no_repeats() -> None:
    rows = read_phrasings(PHRASINGS)
    assert len(rows) >= 300
    kinds = [kind for _, kind in rows]
    assert min(kinds.count(TaskKind.REGION), kinds.count(TaskKind.IMAGE)) >= 150
    lowered = [text.lower() for text, _ in rows]
    assert len(set(lowered)) == len(lowered)


def test_every_listed_phrasing_routes_as_labelled() -> None:
    misses = []
    for text, kind in read_phrasings(PHRASINGS):
        if infer_task(text) is not kind:
            rule = matching_rule(text)
            misses.append(f"{text!r}: expected {kind.name}, rule {rule.why if rule else 'none (default IMAGE)'!r}")
    assert not misses, "\n".join(misses)


@pytest.mark.parametrize("phrasing, split", [("grammar", "train"), ("heldout", "test")])
def test_the_grammar_routes_to_the_task_each_question_trains(phrasing: str, split: str) -> None:
    """Training questions must route at inference the way they were trained. The held-out
    productions are held to the same bar: the rules were written from the list above before the
    grammar existed, and routed every held-out production right the first time it was measured."""
    samples = SyntheticDataset(split, 60, SyntheticConfig(phrasing=phrasing), cache_size=1)
    wrong = [(s.task_name, s.question) for s in samples if infer_task(s.question) is not s.task]
    assert not wrong, wrong[:20]


@pytest.mark.parametrize("text", ["where\u2019s  the cup", "Where\u2019s\tthe\ncup?", "  WHERE'S THE CUP  "])
def test_apostrophes_and_whitespace_are_read_the_way_people_type_them(text: str) -> None:
    assert infer_task(text) is TaskKind.REGION
    assert matching_rule(text) == matching_rule("where's the cup")


def test_no_rule_means_image() -> None:
    assert matching_rule("Is the light on?") is None
    assert infer_task("Is the light on?") is TaskKind.IMAGE
