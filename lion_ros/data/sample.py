"""One training / evaluation example and the dataset interface the trainer wraps."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from lion_ros.api import TaskKind

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class RegionTarget:
    """A phrase grounded to a box normalised to [0, 1] by the source image width/height."""

    phrase: str
    box: Box


@dataclass
class Sample:
    """One instruction-following example.

    `task_name` is the fine-grained task ("caption", "vqa", "yesno", "count", "attribute",
    "rec", "reg", "grounded_caption", "find_all"); `task` is the router row it trains. The
    structured fields duplicate what the target text encodes so that scoring never has to
    re-parse our own targets.
    """

    id: str
    question: str
    answer: str
    task: TaskKind
    task_name: str
    source: str
    split: str
    image_path: str | None = None
    # In-memory RGB uint8 HxWx3 for synthetic scenes; shared between samples of one scene,
    # so treat it as read-only.
    image: np.ndarray | None = field(default=None, repr=False)
    image_size: tuple[int, int] | None = None  # (width, height) of the source image
    tags: list[str] = field(default_factory=list)
    regions: list[RegionTarget] = field(default_factory=list)
    count: int | None = None
    yes_no: bool | None = None
    # Every acceptable answer: the 10 human answers for VQA-style scoring, or all reference
    # captions for captioning.
    answers: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)  # multiple choice options (A-OKVQA)
    # Boxes of the objects the answer is about (synthetic scenes only): where a model has to look
    # to answer. Stage 0 of a from-scratch model may supervise the Q-Former's attention with them.
    evidence: list[Box] = field(default_factory=list)


@runtime_checkable
class SampleDataset(Protocol):
    """What the training and evaluation code relies on: a sized, indexable sample source."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self) -> Iterator[Sample]: ...


class ListDataset:
    """A `SampleDataset` over samples already in memory (what the file readers return)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self._samples = list(samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)
