"""Instruction templates.

The first template of each list is the canonical one used for evaluation; training may draw
from the whole list. Lists are short on purpose: varied enough that the model does not latch
onto one wording, bounded enough that a few-million-parameter model can learn them.
REC/REG/grounded-caption wordings follow Shikra's templates that LION reuses (LION notes §5),
including the literal `<image>` text.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

CAPTION = (
    "Please describe the image using a single short sentence.",
    "What is in the photo?",
    "Describe the image briefly.",
)
VQA = (
    "Question: {question} Short answer:",
    "{question} Answer the question using a single word or phrase.",
)
VSR = (
    'Based on the image, is this statement true or false? "{caption}" Answer yes or no.',
)
REC = (
    "In the image <image>, can you locate {expr} and let me know its coordinates?",
    "In the image, I need to find {expr} and know its coordinates. Can you please help?",
    "Can you disclose the position of {expr} in the photograph by stating its coordinates?",
    "I'd like to know the exact coordinates of {expr} in the photo.",
    "Help me to locate {expr} in image and give me its coordinates, please.",
    "In image, I need the bounding box coordinates of {expr}.",
)
REG = (
    "For the given image <image>, can you provide a unique description of the area {box}?",
    "What is in the region {box} of the image? Give a unique description.",
    "Describe the object in {box} so that it can be told apart from the others.",
)
GROUNDED_CAPTION = (
    "Can you provide a description of the image <image> and include the coordinates "
    "[x0,y0,x1,y1] for each mentioned object?",
    "Describe the image briefly and give the box of every object you mention.",
)
FIND_ALL = (
    "Find all {what} in the image <image> and give their coordinates.",
    "Where are all {what}? Give the coordinates of each.",
    "Locate every one of {what} in the photo and list their boxes.",
)


def pick(templates: Sequence[str], key: str, variety_seed: Optional[int]) -> str:
    """Canonical template when `variety_seed` is None, else a stable per-key choice.

    Hashing the key (not Python's salted `hash`) keeps the choice identical across runs and
    worker processes.
    """
    if variety_seed is None:
        return templates[0]
    digest = hashlib.blake2b(f"{variety_seed}:{key}".encode(), digest_size=8).digest()
    return templates[int.from_bytes(digest, "little") % len(templates)]
