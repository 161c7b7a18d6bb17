"""Dataset files named by a small spec, so `lion-train` (`data.files`) and `lion-eval` accept the
same formats through one table.

    FileSource(format="coco_instances", path="labels/instances_train.json", image_root="images")
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lion_ros.data import readers
from lion_ros.data.sample import ListDataset


@dataclass
class FileSource:
    """One dataset file (YAML-friendly). `annotations` is the format's second file where it has
    one: the VQAv2 / OK-VQA annotations, RefCOCO's `instances.json`, Visual Genome's
    `image_data.json`. `split` selects (RefCOCO) or labels (the others) a split; `task` is
    `rec` or `reg` for RefCOCO / Visual Genome; `limit` keeps the first N samples (0 = all);
    `per_image` gives COCO captions one sample per image with every caption as a reference (the
    evaluation form) instead of one per caption."""

    format: str
    path: str
    annotations: str = ""
    image_root: str = ""
    split: str = ""
    task: str = ""
    limit: int = 0
    per_image: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown dataset format {self.format!r}; expected one of {sorted(FORMATS)}")
        needs_second = self.format in (*readers.REFER_SPLITS, "visual_genome")
        if needs_second and not self.annotations:
            raise ValueError(f"format {self.format} needs 'annotations' (its second file) as well as 'path'")
        if self.format in ("gqa", "vsr") and not self.split:
            raise ValueError(f"format {self.format} needs 'split' (its files do not name it)")
        if self.limit < 0:
            raise ValueError("limit must be >= 0")


# format -> reader call. `v` is the prompt variety seed (None: the canonical template).
_Reader = Callable[[FileSource, int | None], ListDataset]
FORMATS: dict[str, _Reader] = {
    "coco_captions": lambda s, v: readers.read_coco_captions(s.path, s.image_root, s.split or None, s.per_image,
                                                             variety_seed=v),
    "coco_instances": lambda s, v: readers.read_coco_instances(s.path, s.image_root, s.split or None, variety_seed=v),
    "vqav2": lambda s, v: readers.read_vqav2(s.path, s.annotations or None, s.image_root, s.split or None,
                                             variety_seed=v),
    "okvqa": lambda s, v: readers.read_okvqa(s.path, s.annotations or None, s.image_root, s.split or None,
                                             variety_seed=v),
    "aokvqa": lambda s, v: readers.read_aokvqa(s.path, s.image_root, s.split or None, variety_seed=v),
    "gqa": lambda s, v: readers.read_gqa(s.path, s.split, s.image_root, variety_seed=v),
    "vsr": lambda s, v: readers.read_vsr(s.path, s.split, s.image_root),
    **{
        name: (lambda s, v, name=name: readers.read_refcoco(
            s.path, s.annotations, name, s.split or None, s.image_root, s.task or "rec", variety_seed=v))
        for name in readers.REFER_SPLITS
    },
    "visual_genome": lambda s, v: readers.read_visual_genome(s.path, s.annotations, s.image_root, s.split or "train",
                                                             s.task or "reg", variety_seed=v),
    "instructions": lambda s, v: readers.read_instructions(s.path, s.image_root, s.split or "train"),
}


def load_source(source: FileSource, variety_seed: int | None = None) -> ListDataset:
    """The samples of one file (missing files: FileNotFoundError; wrong layouts:
    readers.DatasetFormatError, both naming the file)."""
    samples = FORMATS[source.format](source, variety_seed)
    return ListDataset(list(samples)[: source.limit]) if source.limit else samples
