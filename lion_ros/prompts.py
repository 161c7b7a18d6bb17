"""Prompt text for LION: the tag soft-prompt sentence, Shikra-style task templates, and task-kind
inference for questions asked with `task=auto`.

The T5 encoder sees `tag sentence + question`; the Q-Former sees the raw question only.
Template functions take `choice`: an index or a `random.Random`, so training-data generation
and users get the same, reproducible text. Templates keep Shikra's literal `<image>`: in LION it
is plain text (visual tokens are a prefix, not spliced in), and it is what the region-level data
the released weights saw looked like.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lion_ros.api import TaskKind
from lion_ros.boxes import DEFAULT_CODEC, BoxCodec

TAG_TEMPLATE = (
    "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. "
)
"""Exact sentence from the official `lion_t5.py`; `<extra_id_0>` is overwritten by the soft
prompt vector, so the template and that token must not change for the released weights."""


@dataclass(frozen=True)
class TaskRule:
    """One row of the task-kind table: the first rule whose pattern matches decides."""

    pattern: str  # regex, searched case-insensitively in the question
    kind: TaskKind
    why: str


# A box literal: four numbers in brackets, the way REG / region-caption prompts name a region.
_BOX_LITERAL = r"\[\s*[-+]?\d*\.?\d+(?:\s*,\s*[-+]?\d*\.?\d+){3}"
# Words that introduce the object a pointing verb acts on ("show me THE cup", "mark ALL cans").
_DETERMINER = r"(?:the|a|an|all|every|each|any|my|your|that|this|these|those|where|which)\b"
# Superlatives after "which one is the ...": "which one is the biggest?" compares, it does not point.
_SUPERLATIVE = r"(?:\w+est|most|least)\b"

DEFAULT_TASK_RULES: tuple[TaskRule, ...] = (
    TaskRule(_BOX_LITERAL, TaskKind.REGION, "names a region by its box (REG, region caption)"),
    TaskRule(r"\bhow many\b|\bnumber of\b|\bcount\b", TaskKind.IMAGE,
             "counting is image-level, even 'find how many' or 'show me how many'"),
    TaskRule(
        r"\bwhere\b.*\b(?:taken|photographed|shot|filmed|captured|recorded|set|take place|from)\W*$",
        TaskKind.IMAGE,
        "where the photo was taken or the scene is set is about the whole image",
    ),
    TaskRule(
        r"\bwhere (?:is|was) this(?: (?:photo|picture|image|place|scene))?\W*$"
        r"|\bwhere (?:are we|am i|could this be|might this be|do you think this is)\b",
        TaskKind.IMAGE,
        "'where is this?' / 'where are we?' asks for the place the image shows",
    ),
    TaskRule(
        r"\bwhere\b.*\b(?:usually|typically|normally|generally|commonly|like this|like these)\b",
        TaskKind.IMAGE,
        "where things usually go is general knowledge, not a place in the image",
    ),
    TaskRule(
        r"\bwhere\b.*\b(?:relative to|compared (?:to|with)|with respect to|in relation to|left or right"
        r"|right or left|in front or behind|coming from)\b",
        TaskKind.IMAGE,
        "'where is A relative to B' asks for a relation in words",
    ),
    TaskRule(
        r"\bwhere(?:'?s|'re| is| are| was| were| can| could| do| does| did| in| exactly| r)\b|\bwhereabouts\b"
        rf"|\bwhere\W*$|\bwhere\W+is it\b|\bwhere {_DETERMINER}",
        TaskKind.REGION,
        "asks where an object is",
    ),
    TaskRule(r"\b(?:find out|(?:do|did|would) you find)\b", TaskKind.IMAGE,
             "'find out ...' and 'did you find ...' ask for an answer in words"),
    TaskRule(
        r"\b(?:point(?:ing)? out|highlight|show me|indicate|mark)\s+(?:the\s+)?"
        r"(?:main|primary|key|central|overall|what|why|how|anything|something)\b|\bmark my words\b",
        TaskKind.IMAGE,
        "pointing out an idea ('the main subject', 'what is wrong') asks for words",
    ),
    TaskRule(
        r"\b(?:what|which|is|are)\b.*\blocated (?:on|in|at|to|left|right|behind|next|near|beside|between|above"
        r"|below|under|closer|nearer|further|farther)\b",
        TaskKind.IMAGE,
        "'what is located next to ...' / 'is A located left of B' ask about a relation",
    ),
    TaskRule(r"\blocat(?:e|es|ed|ing|ion|ions)\b|\blocali[sz]", TaskKind.REGION, "locate / location"),
    TaskRule(
        r"\bfind(?:s|ing)?\b|\bpinpoint\b|\bdetect|\bspot\b|\bsegment\b|\b(?:look|looking|search|searching)"
        r" for\b",
        TaskKind.REGION,
        "find / detect / spot / look for",
    ),
    TaskRule(r"\bcoord(?:inate)?s?\b|\bpositions? of\b|\bxy\b", TaskKind.REGION, "asks for coordinates"),
    TaskRule(
        r"\bbounding[- ]?box|\bbbox|\bboxes\b|\bbox (?:around|of|for|after|each|every|all)\b"
        r"|^\W*(?:please )?box (?:the|a|an|all|every|each|it|them)\b",
        TaskKind.REGION,
        "asks for a box",
    ),
    TaskRule(r"\bpoint(?:ing)? (?:to|at|out)\b", TaskKind.REGION, "point to / at / out"),
    TaskRule(rf"\bshow (?:me|us)\s+{_DETERMINER}", TaskKind.REGION, "show me <object>"),
    TaskRule(
        rf"\b(?:highlight|mark|circle|outline|indicate|pick out|single out|select)\s+{_DETERMINER}",
        TaskKind.REGION,
        "highlight / mark / circle <object>",
    ),
    TaskRule(
        rf"\bwhich(?: one| object| thing| item| of (?:these|them|those))?(?:'s| is| are)\s+(?:the|a|an)\s+"
        rf"(?!{_SUPERLATIVE})",
        TaskKind.REGION,
        "'which one is the red cup?' picks an object out",
    ),
    TaskRule(r"\b(?:pick up|grab|grasp|reach for)\b", TaskKind.REGION,
             "acting on an object needs where it is"),
    TaskRule(r"\bwhich (?:region|area|part)\b", TaskKind.REGION, "which region / part"),
    TaskRule(r"\bground(?:ed|ing)\b|\bsquare brackets\b", TaskKind.REGION, "grounded caption"),
)
"""Ordered: the image-level exceptions come before the broad region cues they would otherwise
trip ("how many" before "find", "where was this taken" before "where", "point out the main
subject" before "point out"). No match: IMAGE. tests/data/routing_phrasings.tsv is the labelled
list of requests these rules are held to."""


@dataclass(frozen=True)
class PromptConfig:
    """Everything prompt-side a user may tune. Templates use `<expr>`, `<objs>`, `<question>`
    and `<category>` placeholders (replaced literally, so braces in user text are safe)."""

    tag_template: str = TAG_TEMPLATE
    tag_separator: str = ", "
    task_rules: tuple[TaskRule, ...] = DEFAULT_TASK_RULES
    # [0] is the prompt of the official playground; the rest are Shikra's (paper table 9 and the
    # LION README figure, which shows them with `<image>` removed).
    rec_templates: tuple[str, ...] = (
        "In the image <image>, can you locate <expr> and let me know its coordinates?",
        "In the given <image>, could you find and tell me the coordinates of <expr>?",
        "I need the coordinates of <expr> in <image>, can you please assist me with that?",
        "Locate <expr> in <image> and provide its coordinates, please.",
        "In the image, I need to find <expr> and know its coordinates. Can you please help?",
        "Can you disclose the position of <expr> in the photograph by stating its coordinates?",
        "I'd like to know the exact coordinates of <expr> in the photo.",
        "Help me to locate <expr> in image and give me its coordinates, please.",
        "In image, I need the bounding box coordinates of <expr>.",
    )
    reg_templates: tuple[str, ...] = (
        "For the given image <image>, can you provide a unique description of the area <objs>?",
        "In the photo <image>, how would you describe the selected area <objs> uniquely?",
        "Can you provide a description for the region <objs> in the image <image> such that it "
        "sets it apart from others?",
    )
    # [0]: LION answers plain questions (README examples); the rest are Shikra's Q->A.
    vqa_templates: tuple[str, ...] = (
        "<question>",
        "I want to know the answer to '<question>'. Refer to the image <image> and give a clear "
        "response.",
        "Answer this question directly after referring to the image <image>: <question>",
        "Examine the image <image> and provide a brief answer for '<question>'",
    )
    # [0]: the playground's caption prompt; the rest are Shikra's image_cap.json.
    caption_templates: tuple[str, ...] = (
        "Please describe the image using a single short sentence.",
        "Describe this image <image> as simply as possible.",
        "What is the content of the image <image>? Please answer in short sentences.",
        "Summarize the content of the photo <image>.",
        "Can you give me a brief description of this image <image>?",
    )
    # Shikra's "spotting captioning" (flickr30k.json): a caption with a box after each phrase.
    grounded_caption_templates: tuple[str, ...] = (
        "Can you provide a description of the image <image> and include the coordinates "
        "[x0,y0,x1,y1] for each mentioned object?",
        "Please explain what's happening in the photo <image> and give coordinates "
        "[xmin,ymin,xmax,ymax] for the items you reference.",
        "How would you describe the contents of the image <image>? Please provide the positions "
        "of mentioned objects in square brackets.",
    )
    # Ours (Shikra has no "find all" task): REC phrasing, several boxes in one answer bracket.
    # <category> is a plural ("cups", "red objects"), so every template reads it as one.
    find_all_templates: tuple[str, ...] = (
        "In the image <image>, can you locate all <category> and let me know their coordinates?",
        "Find all <category> in <image> and provide their coordinates, please.",
        "I need the coordinates of all the <category> in <image>, can you please assist me with "
        "that?",
    )


DEFAULT_PROMPTS = PromptConfig()

def build_t5_prompt(
    question: str, tags: str | Sequence[str] | None, *, config: PromptConfig = DEFAULT_PROMPTS
) -> str:
    """The T5 encoder text: the tag sentence followed by `question`.

    `tags` is a list of tag strings or one string separated by "," or "|" (RAM's raw output);
    either way it becomes one plain comma-separated list, never the playground's nested-list
    repr. No tags still gives the sentence with empty brackets: the official model cannot run
    without it and always carries the soft-prompt token, so that is what its weights expect.
    """
    return config.tag_template.format(config.tag_separator.join(_tag_list(tags))) + question


def build_qformer_prompt(question: str) -> str:
    """The Q-Former text: the question alone, without the tag sentence (official behaviour)."""
    return question


def _tag_list(tags: str | Sequence[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = re.split(r"[,|]", tags)
    elif not all(isinstance(tag, str) for tag in tags):
        raise TypeError(f"tags must be strings, got {tags!r}")
    return [tag.strip() for tag in tags if tag.strip()]


def _pick(templates: Sequence[str], choice: int | random.Random) -> str:
    # An index is taken modulo the number of templates so data generators can pass a running
    # sample counter; a Random draws reproducibly.
    if isinstance(choice, random.Random):
        return choice.choice(templates)
    return templates[choice % len(templates)]


def _fill(template: str, **slots: str) -> str:
    for name, value in slots.items():
        template = template.replace(f"<{name}>", value)
    return template


def rec_prompt(
    expr: str,
    choice: int | random.Random = 0,
    *,
    config: PromptConfig = DEFAULT_PROMPTS,
) -> str:
    """Referring expression comprehension: ask for the box of `expr`."""
    return _fill(_pick(config.rec_templates, choice), expr=expr)


def reg_prompt(
    box: Sequence[float],
    choice: int | random.Random = 0,
    *,
    config: PromptConfig = DEFAULT_PROMPTS,
    codec: BoxCodec = DEFAULT_CODEC,
) -> str:
    """Referring expression generation: ask to describe the region `box` (normalised)."""
    return _fill(_pick(config.reg_templates, choice), objs=codec.format_boxes([box]))


def vqa_prompt(
    question: str, choice: int | random.Random = 0, *, config: PromptConfig = DEFAULT_PROMPTS
) -> str:
    """Visual question answering."""
    return _fill(_pick(config.vqa_templates, choice), question=question)


def caption_prompt(
    choice: int | random.Random = 0, *, config: PromptConfig = DEFAULT_PROMPTS
) -> str:
    """Short image caption."""
    return _pick(config.caption_templates, choice)


def grounded_caption_prompt(
    choice: int | random.Random = 0, *, config: PromptConfig = DEFAULT_PROMPTS
) -> str:
    """Caption with a box after each mentioned object.

    Target: `BoxCodec.format_grounded_caption`."""
    return _pick(config.grounded_caption_templates, choice)


def find_all_prompt(
    category: str, choice: int | random.Random = 0, *, config: PromptConfig = DEFAULT_PROMPTS
) -> str:
    """Every instance of `category` (target: `BoxCodec.format_answer` with several boxes)."""
    return _fill(_pick(config.find_all_templates, choice), category=category)


def matching_rule(question: str, *, config: PromptConfig = DEFAULT_PROMPTS) -> TaskRule | None:
    """The first rule of `config.task_rules` that matches `question`, or None.

    Runs of whitespace count as one space and typographic apostrophes as "'", so "where’s  the
    cup" routes like "where's the cup": people type both, and the rules are written once."""
    text = re.sub(r"\s+", " ", question.replace("\u2019", "'").replace("\u2018", "'"))
    return next((rule for rule in config.task_rules if re.search(rule.pattern, text, re.IGNORECASE)), None)


def infer_task(
    question: str, requested: TaskKind | None = None, *, config: PromptConfig = DEFAULT_PROMPTS
) -> TaskKind:
    """The router row for `question`: `requested` if given, else the kind of the first matching
    rule of `config.task_rules` (see `DEFAULT_TASK_RULES`, `matching_rule`), else IMAGE."""
    if requested is not None:
        return TaskKind(requested)
    rule = matching_rule(question, config=config)
    return rule.kind if rule is not None else TaskKind.IMAGE
