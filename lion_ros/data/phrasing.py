"""How people ask: a phrasing grammar for the synthetic questions, with held-out productions.

The templates in `lion_ros.prompts` are a handful of fixed sentences per task; operators ask
"hey robot, where's the red cup?", "is the ball on the left side of the bowl, right?" or "how
many cans are there? answer with a number". This grammar writes each synthetic question from
independent choice points:

- a frame per task ("Can you point out {x}?", "{a} is {rel} {b}, right?", ...),
- relation synonyms ("left of", "on the left side of", "nearer to the camera than", ...),
- the noun for an unnamed object ("object", "thing", "item"),
- an optional opener ("hey robot, "), closer ("Answer with a number.") or polite tail (" please"),
- optional surface noise: case, punctuation and spacing the way people type.

Every alternative is a `Production` with a stable id (its choice point and its text). A fixed
subset, `held_out=True`, is reserved for the `phrasing` evaluation split: training draws only
the other productions, the held-out split draws only held-out ones, so a model is tested on
wordings no training run has seen, held out by production, not by seed. Optional choice points
may also draw nothing in either split (no opener, no noise): absence is not a production.
Answers are not this module's business: they keep their target forms.
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PHRASINGS: tuple[str, ...] = ("templates", "grammar", "heldout")
"""SyntheticConfig.phrasing: the prompts' templates (what the shipped lineage trained on), the
grammar's training productions, or its held-out productions (never allowed on the train split)."""


@dataclass(frozen=True)
class Production:
    id: str  # "<choice point>:<text>", stable as long as the text is
    text: str
    held_out: bool


def _point(name: str, train: tuple[str, ...], held_out: tuple[str, ...]) -> tuple[Production, ...]:
    if set(train) & set(held_out) or len(set(train)) != len(train) or len(set(held_out)) != len(held_out):
        raise ValueError(f"choice point {name}: a text is listed twice")
    return tuple(Production(f"{name}:{text}", text, False) for text in train) + tuple(
        Production(f"{name}:{text}", text, True) for text in held_out)


# Frames, per task. Slots: {x} an object ("the red cup", "the cup left of the bowl"), {xs} a plural
# ("cups", "red objects"), {a} {rel} {b} a spatial statement, {d} an object named without its
# category ("the small red object"), {box} a box literal.
FRAMES: dict[str, tuple[Production, ...]] = {
    "caption": _point("caption", (
        "What do you see?", "Describe the scene.", "Describe what's on the table.", "Tell me what you see.",
        "What's on the table?", "Give me a short description of the image.", "Caption this image.",
        "Can you describe what you see?", "What is in front of you?",
    ), (
        "What are you looking at?", "Summarize what you see.", "Could you describe the picture for me?",
        "What's in the picture?", "Tell me about this scene.", "Describe the table and what's on it.",
    )),
    "grounded_caption": _point("grounded_caption", (
        "Describe the scene and give the bounding box of each object.",
        "List every object on the table with its coordinates.",
        "Caption this image with a box for every object.",
        "What's on the table? Include bounding boxes.",
        "Describe what you see, with coordinates for each thing you mention.",
    ), (
        "Tell me what's on the table and where each object is.",
        "Name everything you see and mark where it is.",
        "Give me a grounded description of the scene.",
        "What objects are there and where are they?",
        "Describe the scene with boxes around the objects.",
    )),
    "reg": _point("reg", (
        "What is at {box}?", "What's in {box}?", "Describe the object in {box}.", "What object is inside {box}?",
        "Name the thing at {box}.",
    ), (
        "Tell me what's at {box}.", "What do you see in the region {box}?", "Which object is this: {box}?",
        "What can you tell me about {box}?",
    )),
    "yesno": _point("yesno", (
        "Is {a} {rel} {b}?", "{a} is {rel} {b}, right?", "Tell me if {a} is {rel} {b}.",
        "Would you say {a} is {rel} {b}?", "Is it true that {a} is {rel} {b}?", "Check whether {a} is {rel} {b}.",
        "Is {a} standing {rel} {b}?",
    ), (
        "Can you tell me whether {a} is {rel} {b}?", "{a} is {rel} {b}, isn't it?", "Am I right that {a} is {rel} {b}?",
        "Do you think {a} is {rel} {b}?", "Would you agree that {a} is {rel} {b}?", "{a} {rel} {b}?",
        "Is {a} placed {rel} {b}?",
    )),
    "count": _point("count", (
        "How many {xs} are there?", "How many {xs} do you see?", "Count the {xs}.", "Can you count the {xs}?",
        "Number of {xs}?", "Tell me how many {xs} there are.", "How many {xs} are on the table?",
    ), (
        "What's the number of {xs} on the table?", "How many {xs} can you see?", "Could you count the {xs} for me?",
        "{xs}: how many?", "Give me a count of the {xs}.", "Count how many {xs} there are.",
        "I'd like to know how many {xs} there are.",
    )),
    "colour": _point("colour", (
        "What colour is {x}?", "What color is {x}?", "What's the colour of {x}?", "Tell me the color of {x}.",
        "Which colour is {x}?", "{x} is what colour?",
    ), (
        "What color would you say {x} is?", "Can you tell me what colour {x} is?", "Colour of {x}?",
        "Do you know the color of {x}?", "What colour does {x} have?", "Name the colour of {x}.",
    )),
    "size": _point("size", (
        "What size is {x}?", "Is {x} small or large?", "Is {x} big or small?", "How big is {x}?",
        "Tell me the size of {x}.",
    ), (
        "How large is {x}?", "Would you say {x} is small or large?", "What's the size of {x}?",
        "{x}: small or large?", "Is {x} a big one or a small one?",
    )),
    "category": _point("category", (
        "What is {d}?", "What kind of object is {d}?", "What's {d}?", "What is {d} called?", "Name {d}.",
    ), (
        "What type of thing is {d}?", "Can you tell me what {d} is?", "What do you call {d}?", "Identify {d}.",
        "{d}: what is it?",
    )),
    "rec": _point("rec", (
        "Where is {x}?", "Where's {x}?", "Point to {x}.", "Show me {x}.", "Find {x}.", "Locate {x}.",
        "Can you find {x}?", "Give me the bounding box of {x}.", "Where is {x} in the image?", "Point out {x}.",
        "Can you point out {x}?", "Highlight {x}.",
    ), (
        "Show me where {x} is.", "Which one is {x}?", "Mark {x}.", "Can you spot {x}?", "Give me the box of {x}.",
        "Could you locate {x} for me?", "I'm looking for {x}.", "Where can I find {x}?", "Draw a box around {x}.",
        "Help me find {x}.", "Do you see where {x} is?", "Where exactly is {x}?",
    )),
    "find_all": _point("find_all", (
        "Find all the {xs}.", "Where are the {xs}?", "Show me all {xs}.", "Point to all the {xs}.",
        "Locate all {xs}.", "Give me boxes for all the {xs}.", "Find every one of the {xs}.",
    ), (
        "Highlight all the {xs}.", "Mark every one of the {xs}.", "Where are all the {xs}?",
        "Can you find all {xs}?", "Show me each of the {xs}.", "Point out all {xs}.",
        "I need the locations of all {xs}.",
    )),
}

# "a is <rel> b" for each relation the synthetic scenes decide (see synthetic.spatial_relation).
RELATIONS: dict[str, tuple[Production, ...]] = {
    "left": _point("relation.left", ("left of", "to the left of", "on the left of", "more to the left than"),
                   ("on the left side of", "further left than", "to the left side of")),
    "right": _point("relation.right", ("right of", "to the right of", "on the right of", "more to the right than"),
                    ("on the right side of", "further right than", "to the right side of")),
    "front": _point("relation.front", ("in front of", "closer to the camera than", "nearer to you than", "closer than"),
                    ("nearer to the camera than", "closer to you than", "nearer than")),
    "behind": _point("relation.behind", ("behind", "farther from the camera than", "further away than",
                                         "farther away than"),
                     ("further from the camera than", "in back of", "more distant than")),
}

NOUNS: tuple[Production, ...] = _point("noun", ("object", "thing"), ("item",))

OPENERS: tuple[Production, ...] = _point(
    "opener", ("hey robot, ", "robot, ", "ok, ", "hi, ", "so "),
    ("hey there, ", "excuse me, ", "quick question: ", "ok robot, ", "um, ", "yo "))

# A second sentence that says how to answer, per answer kind.
CLOSERS: dict[str, tuple[Production, ...]] = {
    "yesno": _point("closer.yesno", ("Answer yes or no.", "Yes or no?", "Just say yes or no."),
                    ("Reply with yes or no, please.", "A simple yes or no will do.", "yes/no?")),
    "count": _point("closer.count", ("Answer with a number.", "Just the number, please.", "Give me a number."),
                    ("Reply with a single number.", "Digits only.", "Exact count please.")),
    "word": _point("closer.word", ("One word please.", "Answer in one word.", "Keep it short."),
                   ("Single word answer.", "Just the word.", "Short answer please.")),
    "box": _point("closer.box", ("Coordinates please.", "Give me the coordinates."),
                  ("Box coordinates only.", "I need the bounding box.")),
    "describe": _point("closer.describe", ("Keep it short.", "One sentence please."),
                       ("Briefly.", "In a few words please.")),
}
CLOSER_OF_TASK: dict[str, str | None] = {
    "caption": "describe", "grounded_caption": None, "reg": "describe", "yesno": "yesno", "count": "count",
    "colour": "word", "size": "word", "category": "word", "rec": "box", "find_all": "box",
}
# Said just before the final punctuation: "where is the cup please?"
TAILS: tuple[Production, ...] = _point("tail", (" please", ", please", " now"),
                                       (" if you can", " real quick", " when you get a chance"))

_BOX = re.compile(r"\[[^\[\]]*\]")
_FINAL = re.compile(r"[.?!]+$")


def _outside_boxes(text: str, change: Callable[[str], str]) -> str:
    """`change` applied to the text between box literals, so "[0.1,0.2,...]" survives noise."""
    out, last = [], 0
    for match in _BOX.finditer(text):
        out += [change(text[last:match.start()]), match.group()]
        last = match.end()
    return "".join([*out, change(text[last:])])


def _double_one_space(text: str, rng: random.Random) -> str:
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    i = spaces[rng.randrange(len(spaces))]
    return text[:i] + " " + text[i:]


def _shout_one_word(text: str, rng: random.Random) -> str:
    """One word in capitals for emphasis: "is the cup LEFT of the ball?"."""
    words = list(re.finditer(r"[A-Za-z]{3,}", _BOX.sub(lambda b: " " * len(b.group()), text)))
    if not words:
        return text
    word = words[rng.randrange(len(words))]
    return text[:word.start()] + word.group().upper() + text[word.end():]


def _repeat_final(text: str, rng: random.Random) -> str:
    final = _FINAL.search(text)
    mark = final.group()[-1] if final else "?"
    return _FINAL.sub("", text) + mark * 3


# Surface noise: choice point -> transforms. Each transform takes the text and the draw's rng.
_NOISE: dict[str, dict[str, tuple[bool, Callable[[str, random.Random], str]]]] = {
    "case": {
        "lower-all": (False, lambda t, r: t.lower()),
        "lower-first": (False, lambda t, r: t[:1].lower() + t[1:]),
        "upper-all": (True, lambda t, r: t.upper()),
        "shout-one-word": (True, _shout_one_word),
    },
    "punctuation": {
        "drop-final": (False, lambda t, r: _FINAL.sub("", t)),
        "space-before-final": (False, lambda t, r: _FINAL.sub(lambda m: " " + m.group(), t)),
        "drop-apostrophes": (False, lambda t, r: t.replace("'", "")),
        "repeat-final": (True, _repeat_final),
        "drop-commas": (True, lambda t, r: _outside_boxes(t, lambda s: s.replace(",", ""))),
    },
    "spacing": {
        "double-one-space": (False, _double_one_space),
        "no-space-after-comma": (True, lambda t, r: _outside_boxes(t, lambda s: s.replace(", ", ","))),
    },
}
NOISE: dict[str, tuple[Production, ...]] = {
    point: tuple(Production(f"{point}:{name}", name, held) for name, (held, _) in transforms.items())
    for point, transforms in _NOISE.items()
}
# How often an optional choice point draws something (the same in both splits).
_RATES: dict[str, float] = {"opener": 0.35, "closer": 0.3, "tail": 0.2, "case": 0.3, "punctuation": 0.35,
                            "spacing": 0.2}


def all_productions() -> list[Production]:
    groups = [*FRAMES.values(), *RELATIONS.values(), NOUNS, OPENERS, *CLOSERS.values(), TAILS, *NOISE.values()]
    return [p for group in groups for p in group]


class Phraser:
    """Draws the productions of one question; `used` lists their ids in the order drawn.

    `held_out` picks the split: False draws only training productions, True only held-out ones."""

    def __init__(self, rng: random.Random, held_out: bool) -> None:
        self.rng = rng
        self.held_out = held_out
        self.used: list[str] = []

    @classmethod
    def for_sample(cls, key: str, held_out: bool) -> Phraser:
        """A phraser whose draws depend only on `key` (e.g. scene seed and slot), never on the order
        samples are made in, so the same question is worded the same in every run and worker."""
        digest = hashlib.blake2b(f"phrasing:{key}".encode(), digest_size=8).digest()
        return cls(random.Random(int.from_bytes(digest, "little")), held_out)

    def _draw(self, group: tuple[Production, ...]) -> Production:
        options = [p for p in group if p.held_out == self.held_out]
        chosen = options[self.rng.randrange(len(options))]
        self.used.append(chosen.id)
        return chosen

    def _maybe(self, point: str) -> bool:
        return self.rng.random() < _RATES[point]

    def relation(self, rel: str) -> str:
        """A way to say "is <rel> of": rel is left, right, front or behind."""
        if rel not in RELATIONS:
            raise ValueError(f"unknown relation {rel!r}; expected one of {list(RELATIONS)}")
        return self._draw(RELATIONS[rel]).text

    def noun(self, plural: bool = False) -> str:
        """The word for an object named without its category ("object", "thing", ...)."""
        return self._draw(NOUNS).text + ("s" if plural else "")

    def question(self, task: str, slots: Mapping[str, str] | None = None) -> str:
        """One question of `task` (a key of FRAMES) with `slots` filled in, dressed with an optional
        opener, closer or tail and surface noise."""
        if task not in FRAMES:
            raise ValueError(f"unknown phrasing task {task!r}; expected one of {list(FRAMES)}")
        frame = self._draw(FRAMES[task])
        try:
            text = frame.text.format(**(slots or {}))
        except KeyError as missing:
            raise ValueError(f"frame {frame.id!r} needs the slot {missing}; got {sorted(slots or {})}") from None
        family = CLOSER_OF_TASK[task]
        if family is not None and self._maybe("closer"):
            text = f"{text} {self._draw(CLOSERS[family]).text}"
        elif self._maybe("tail"):
            final = _FINAL.search(text)
            end = final.start() if final else len(text)
            text = text[:end] + self._draw(TAILS).text + text[end:]
        if self._maybe("opener"):
            opener = self._draw(OPENERS).text
            # "I'm looking for ..." keeps its capital I after an opener.
            first = text[:1] if re.match(r"I\b", text) else text[:1].lower()
            text = opener + first + text[1:]
        text = text[:1].upper() + text[1:]
        for point, transforms in _NOISE.items():
            if self._maybe(point):
                text = transforms[self._draw(NOISE[point]).text][1](text, self.rng)
        return text
