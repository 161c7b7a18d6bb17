"""Tag sentence, task templates and task-kind inference."""
from __future__ import annotations

import random
import re

import pytest

from lion_ros.api import TaskKind
from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.prompts import (
    DEFAULT_PROMPTS,
    TAG_TEMPLATE,
    PromptConfig,
    TaskRule,
    build_qformer_prompt,
    build_t5_prompt,
    caption_prompt,
    find_all_prompt,
    grounded_caption_prompt,
    infer_task,
    rec_prompt,
    reg_prompt,
    vqa_prompt,
)

CAPTION = "Please describe the image using a single short sentence."


# --- tag sentence -------------------------------------------------------------------------


def test_template_is_the_official_string() -> None:
    assert TAG_TEMPLATE == (
        "According to <extra_id_0>, you are allowed to use or partially use the following "
        "tags: [{}]. "
    )


def test_reference_example() -> None:
    assert build_t5_prompt(CAPTION, ["beer", "table", "drink", "restaurant"]) == (
        "According to <extra_id_0>, you are allowed to use or partially use the following tags: "
        "[beer, table, drink, restaurant]. Please describe the image using a single short "
        "sentence."
    )


@pytest.mark.parametrize(
    "tags",
    [
        ["airport", "beagle", "bend"],
        "airport, beagle, bend",
        "airport | beagle | bend",  # RAM's raw separator
        " airport ,beagle,, bend ",
        ("airport", "", " beagle", "bend"),
    ],
)
def test_tags_become_one_plain_comma_separated_list(tags: object) -> None:
    prompt = build_t5_prompt("Q?", tags)  # type: ignore[arg-type]
    assert prompt.endswith("tags: [airport, beagle, bend]. Q?")
    assert "[[" not in prompt and "'" not in prompt


@pytest.mark.parametrize("tags", [None, [], "", " , "])
def test_no_tags_keeps_the_sentence_with_empty_brackets(tags: object) -> None:
    prompt = build_t5_prompt("What is this?", tags)  # type: ignore[arg-type]
    assert prompt == TAG_TEMPLATE.format("") + "What is this?"
    assert prompt.count("<extra_id_0>") == 1


def test_nested_tag_lists_are_rejected() -> None:
    # The playground's `[tags]` bug: a list inside the list.
    with pytest.raises(TypeError):
        build_t5_prompt("Q?", [["airport, beagle"]])  # type: ignore[list-item]


def test_qformer_gets_the_raw_question() -> None:
    question = "Where is the red cup?"
    assert build_qformer_prompt(question) == question
    assert build_t5_prompt(question, ["cup"]).endswith(question)
    assert "According" not in build_qformer_prompt(question)


def test_custom_separator() -> None:
    config = PromptConfig(tag_separator="; ")
    assert "[a; b]" in build_t5_prompt("Q", ["a", "b"], config=config)


# --- task templates -----------------------------------------------------------------------


def test_rec_default_is_the_playground_prompt() -> None:
    assert rec_prompt("the dog on the left") == (
        "In the image <image>, can you locate the dog on the left and let me know its coordinates?"
    )


def test_caption_default_is_the_playground_prompt() -> None:
    assert caption_prompt() == CAPTION


def test_index_choice_is_deterministic_and_wraps() -> None:
    n = len(DEFAULT_PROMPTS.rec_templates)
    prompts = [rec_prompt("the cat", i) for i in range(n)]
    assert len(set(prompts)) == n
    assert rec_prompt("the cat", n + 2) == prompts[2]


def test_rng_choice_is_reproducible_and_varied() -> None:
    first = [vqa_prompt("Is it raining?", random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(1)
    drawn = {vqa_prompt("Is it raining?", rng) for _ in range(60)}
    assert len(drawn) == len(DEFAULT_PROMPTS.vqa_templates)


ALL_PROMPTS = {
    "rec": lambda i: rec_prompt("the {0} mug <b>", i),
    "reg": lambda i: reg_prompt((0.1, 0.2, 0.3, 0.4), i),
    "vqa": lambda i: vqa_prompt("What colour is the mug?", i),
    "caption": caption_prompt,
    "grounded": grounded_caption_prompt,
    "find_all": lambda i: find_all_prompt("mugs", i),
}


@pytest.mark.parametrize("name", ALL_PROMPTS)
def test_placeholders_are_filled(name: str) -> None:
    for i in range(12):
        prompt = ALL_PROMPTS[name](i)
        assert not re.search(r"<(expr|objs|question|category)>", prompt), prompt
        assert prompt.strip() == prompt and prompt


def test_user_text_with_braces_and_tags_is_inserted_verbatim() -> None:
    assert "the {0} mug <b>" in rec_prompt("the {0} mug <b>", 3)


def test_reg_prompt_carries_the_codec_box() -> None:
    box = (0.1234, 0.2, 0.3, 0.45)
    prompt = reg_prompt(box, 1)
    assert DEFAULT_CODEC.format_boxes([box]) in prompt
    [(_, parsed)] = DEFAULT_CODEC.parse_normalized(prompt)
    assert parsed == pytest.approx((0.123, 0.2, 0.3, 0.45))


def test_find_all_and_vqa_insert_their_argument() -> None:
    assert all("traffic cones" in find_all_prompt("traffic cones", i) for i in range(3))
    assert all("Is the door open?" in vqa_prompt("Is the door open?", i) for i in range(4))


# --- task-kind inference ------------------------------------------------------------------

# Requests in everyday wording: tests/test_routing.py and tests/data/routing_phrasings.tsv.


def test_templates_infer_their_own_kind() -> None:
    # What we generate for training must route the same way at inference.
    for i in range(20):
        for name in ("rec", "reg", "grounded", "find_all"):
            assert infer_task(ALL_PROMPTS[name](i)) is TaskKind.REGION, ALL_PROMPTS[name](i)
        for name in ("vqa", "caption"):
            assert infer_task(ALL_PROMPTS[name](i)) is TaskKind.IMAGE, ALL_PROMPTS[name](i)


def test_tag_sentence_does_not_change_the_kind() -> None:
    assert infer_task(build_t5_prompt(CAPTION, ["box", "coordinates"])) is TaskKind.REGION
    assert infer_task(CAPTION) is TaskKind.IMAGE  # so callers must infer on the raw question


def test_requested_kind_wins() -> None:
    assert infer_task("Where is the cup?", TaskKind.IMAGE) is TaskKind.IMAGE
    assert infer_task("Describe it.", TaskKind.REGION) is TaskKind.REGION
    assert infer_task("Describe it.", 0) is TaskKind.REGION  # type: ignore[arg-type]


def test_rules_are_configurable_and_ordered() -> None:
    config = PromptConfig(
        task_rules=(
            TaskRule(r"\bthis\b", TaskKind.IMAGE, "x"),
            TaskRule(r"\bcup\b", TaskKind.REGION, "y"),
        )
    )
    assert infer_task("the cup", config=config) is TaskKind.REGION
    assert infer_task("this cup", config=config) is TaskKind.IMAGE
    assert infer_task("Where is the dog?", config=config) is TaskKind.IMAGE
