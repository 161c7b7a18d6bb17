"""Readers for public VL datasets stored locally, in their original file layouts.

Each reader returns a `ListDataset` of `Sample`s with a LION-style instruction and target.
Prompts come from `lion_ros.prompts`: the canonical template unless `variety_seed` is given
(then a stable per-sample choice from the same list). Missing files raise `FileNotFoundError`; files that parse but do
not have the expected layout raise `DatasetFormatError` naming the file and the problem.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from lion_ros import prompts
from lion_ros.answers import parse_count, parse_verdict
from lion_ros.api import TaskKind
from lion_ros.data import templates
from lion_ros.data.formatting import boxes_target, normalize_box, rec_target, xywh_to_normalized_xyxy
from lion_ros.data.images import ImageReadError, image_size
from lion_ros.data.sample import ListDataset, RegionTarget, Sample


class DatasetFormatError(ValueError):
    """A dataset file exists but does not have the layout of its public release."""


def _check_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _load_json(path: str, what: str) -> Any:
    _check_file(path, what)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{what} {path} is not valid JSON: {e}") from e


def _get(record: Any, key: str, path: str, context: str) -> Any:
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{path}: expected an object in {context}, got {type(record).__name__}")
    if key not in record:
        raise DatasetFormatError(f"{path}: missing key {key!r} in {context}")
    return record[key]


def _list(value: Any, path: str, context: str) -> list:
    if not isinstance(value, list):
        raise DatasetFormatError(f"{path}: expected a list for {context}, got {type(value).__name__}")
    return value


def _jsonl_records(path: str, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of every non-blank line of a JSON-lines file."""
    _check_file(path, what)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetFormatError(f"{path}:{line_no}: not valid JSON: {e}") from e


def _coco_bbox(ann: Any, path: str) -> list:
    """A COCO annotation's pixel `[x, y, w, h]`."""
    bbox = _get(ann, "bbox", path, "an annotation")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise DatasetFormatError(f"{path}: annotation {ann.get('id')} bbox must be [x, y, w, h]")
    return bbox


def _most_common(answers: Iterable[str]) -> str:
    # Ties go to the answer seen first, so the target does not depend on hash order.
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in counts if counts[a] == best)


def _vqa_question(question: str, sid: str, variety_seed: int | None) -> str:
    return prompts.vqa_prompt(question, templates.choice_for(sid, variety_seed))


# ---------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------

def read_coco_captions(path: str, image_root: str = "", split: str | None = None, per_image: bool = False,
                       variety_seed: int | None = None) -> ListDataset:
    """COCO `captions_<split>.json`: one sample per caption, or per image with every caption
    in `answers` (the evaluation form, `per_image=True`; the target is the first caption)."""
    data = _load_json(path, "COCO captions file")
    images = _list(_get(data, "images", path, "the top level"), path, "'images'")
    anns = _list(_get(data, "annotations", path, "the top level"), path, "'annotations'")
    split = split or _split_from_name(path, "captions_")
    info = {}
    for img in images:
        info[_get(img, "id", path, "an image")] = (
            _get(img, "file_name", path, "an image"), _get(img, "width", path, "an image"),
            _get(img, "height", path, "an image"),
        )
    by_image: dict[Any, list[tuple[Any, str]]] = {}
    for ann in anns:
        image_id = _get(ann, "image_id", path, "an annotation")
        if image_id not in info:
            raise DatasetFormatError(f"{path}: caption {ann.get('id')} refers to unknown image {image_id}")
        caption = str(_get(ann, "caption", path, "an annotation")).strip()
        by_image.setdefault(image_id, []).append((_get(ann, "id", path, "an annotation"), caption))
    samples = []
    for image_id, caps in by_image.items():
        file_name, width, height = info[image_id]
        groups = [caps] if per_image else [[c] for c in caps]
        for group in groups:
            sid = f"coco_caption/{image_id}" if per_image else f"coco_caption/{image_id}/{group[0][0]}"
            samples.append(Sample(
                id=sid, question=prompts.caption_prompt(templates.choice_for(sid, variety_seed)),
                answer=group[0][1], task=TaskKind.IMAGE, task_name="caption", source="coco_caption", split=split,
                image_path=os.path.join(image_root, file_name), image_size=(width, height),
                answers=[c for _, c in caps] if per_image else [group[0][1]],
            ))
    return ListDataset(samples)


def _split_from_name(path: str, prefix: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[len(prefix):] if stem.startswith(prefix) else stem


# ---------------------------------------------------------------------------------------
# VQA family
# ---------------------------------------------------------------------------------------

def read_vqav2(questions_path: str, annotations_path: str | None = None, image_root: str = "",
               split: str | None = None, source: str = "vqav2",
               variety_seed: int | None = None) -> ListDataset:
    """VQAv2 `v2_OpenEnded_mscoco_<subtype>_questions.json` + `v2_mscoco_<subtype>_annotations.json`.

    Without annotations (test splits) the samples have empty answers. The target is the
    annotators' `multiple_choice_answer`; all 10 answers go to `answers` for VQA scoring.
    Images are `COCO_<data_subtype>_<image_id:012d>.jpg` under `image_root`.
    """
    qdata = _load_json(questions_path, f"{source} questions file")
    questions = _list(_get(qdata, "questions", questions_path, "the top level"), questions_path, "'questions'")
    subtype = str(_get(qdata, "data_subtype", questions_path, "the top level"))
    answers_by_qid: dict[Any, tuple[str, list[str], str]] = {}
    if annotations_path is not None:
        adata = _load_json(annotations_path, f"{source} annotations file")
        for ann in _list(_get(adata, "annotations", annotations_path, "the top level"), annotations_path,
                         "'annotations'"):
            qid = _get(ann, "question_id", annotations_path, "an annotation")
            raw = _list(_get(ann, "answers", annotations_path, f"annotation {qid}"), annotations_path,
                        f"answers of {qid}")
            answers = [str(_get(a, "answer", annotations_path, f"an answer of {qid}")) for a in raw]
            best = ann.get("multiple_choice_answer") or (_most_common(answers) if answers else "")
            answers_by_qid[qid] = (str(best), answers, str(ann.get("answer_type", "")))
    samples = []
    for q in questions:
        qid = _get(q, "question_id", questions_path, "a question")
        image_id = int(_get(q, "image_id", questions_path, f"question {qid}"))
        text = str(_get(q, "question", questions_path, f"question {qid}"))
        if annotations_path is not None and qid not in answers_by_qid:
            raise DatasetFormatError(f"{annotations_path}: no annotation for question {qid}")
        best, answers, answer_type = answers_by_qid.get(qid, ("", [], ""))
        sid = f"{source}/{qid}"
        is_yes_no = answer_type == "yes/no" and best in ("yes", "no")
        samples.append(Sample(
            id=sid, question=_vqa_question(text, sid, variety_seed), answer=best, task=TaskKind.IMAGE,
            task_name="vqa", source=source, split=split or subtype,
            image_path=os.path.join(image_root, f"COCO_{subtype}_{image_id:012d}.jpg"),
            answers=answers, yes_no=(best == "yes") if is_yes_no else None,
        ))
    return ListDataset(samples)


def read_okvqa(questions_path: str, annotations_path: str | None = None, image_root: str = "",
               split: str | None = None, variety_seed: int | None = None) -> ListDataset:
    """OK-VQA `OpenEnded_mscoco_<subtype>_questions.json` + `mscoco_<subtype>_annotations.json`
    (the VQAv2 layout; 5 answers each given twice)."""
    return read_vqav2(questions_path, annotations_path, image_root, split, "okvqa", variety_seed)


def read_aokvqa(path: str, image_root: str = "", split: str | None = None,
                variety_seed: int | None = None) -> ListDataset:
    """A-OKVQA `aokvqa_v1p0_<split>.json`: a list of questions with `choices`,
    `correct_choice_idx` and 10 `direct_answers` (absent in the test split).

    Images are COCO 2017: `<image_root>/<image_id:012d>.jpg`.
    """
    data = _list(_load_json(path, "A-OKVQA file"), path, "the top level")
    samples = []
    for rec in data:
        qid = _get(rec, "question_id", path, "a question")
        image_id = int(_get(rec, "image_id", path, f"question {qid}"))
        text = str(_get(rec, "question", path, f"question {qid}"))
        choices = [str(c) for c in _list(rec.get("choices", []), path, f"choices of {qid}")]
        direct = [str(a) for a in _list(rec.get("direct_answers", []), path, f"direct_answers of {qid}")]
        idx = rec.get("correct_choice_idx")
        if idx is not None and not (isinstance(idx, int) and 0 <= idx < len(choices)):
            raise DatasetFormatError(f"{path}: correct_choice_idx {idx!r} out of range for question {qid}")
        answer = _most_common(direct) if direct else (choices[idx] if idx is not None else "")
        sid = f"aokvqa/{qid}"
        samples.append(Sample(
            id=sid, question=_vqa_question(text, sid, variety_seed), answer=answer, task=TaskKind.IMAGE,
            task_name="vqa", source="aokvqa", split=split or str(rec.get("split", "")),
            image_path=os.path.join(image_root, f"{image_id:012d}.jpg"), answers=direct, choices=choices,
        ))
    return ListDataset(samples)


def read_gqa(path: str, split: str, image_root: str = "", variety_seed: int | None = None) -> ListDataset:
    """GQA `<split>_balanced_questions.json`: a dict keyed by question id with `question`,
    `imageId` and (except in the submission split) `answer`. Images: `<image_root>/<imageId>.jpg`."""
    data = _load_json(path, "GQA questions file")
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected an object keyed by question id, got {type(data).__name__}")
    samples = []
    for qid, rec in data.items():
        text = str(_get(rec, "question", path, f"question {qid}"))
        image_id = str(_get(rec, "imageId", path, f"question {qid}"))
        answer = str(rec.get("answer", ""))
        sid = f"gqa/{qid}"
        samples.append(Sample(
            id=sid, question=_vqa_question(text, sid, variety_seed), answer=answer, task=TaskKind.IMAGE,
            task_name="vqa", source="gqa", split=split, image_path=os.path.join(image_root, f"{image_id}.jpg"),
            answers=[answer] if answer else [],
            yes_no=(answer == "yes") if answer in ("yes", "no") else None,
        ))
    return ListDataset(samples)


def read_vsr(path: str, split: str, image_root: str = "") -> ListDataset:
    """VSR `<split>.jsonl`: one JSON object per line with `image`, `caption`, `label` (1 true,
    0 false) and `relation`. Images: `<image_root>/<image>`."""
    samples = []
    for line_no, rec in _jsonl_records(path, "VSR jsonl file"):
        where = f"line {line_no}"
        caption = str(_get(rec, "caption", path, where))
        label = _get(rec, "label", path, where)
        if label not in (0, 1):
            raise DatasetFormatError(f"{path}:{line_no}: label must be 0 or 1, got {label!r}")
        answer = "yes" if label == 1 else "no"
        sid = f"vsr/{split}/{line_no}"
        samples.append(Sample(
            id=sid, question=templates.VSR.format(caption=caption), answer=answer, task=TaskKind.IMAGE,
            task_name="yesno", source="vsr", split=split,
            image_path=os.path.join(image_root, str(_get(rec, "image", path, where))),
            yes_no=label == 1, answers=[answer], tags=[str(rec.get("relation", ""))] if rec.get("relation") else [],
        ))
    return ListDataset(samples)


# ---------------------------------------------------------------------------------------
# Region level
# ---------------------------------------------------------------------------------------

class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for untrusted files that only rebuilds plain builtin containers and scalars.

    Plain dicts, lists, strings and numbers never reach `find_class` (they have their own
    opcodes), so any global a file asks for beyond these builtins is refused.
    """

    ALLOWED = frozenset({"dict", "list", "str", "int", "float", "tuple"})

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in self.ALLOWED:
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: this pickle may only contain plain dicts, lists, "
            "strings and numbers"
        )


def safe_load_pickle(path: str) -> Any:
    _check_file(path, "pickle file")
    with open(path, "rb") as f:
        data = f.read()
    # The RefCOCO pickles were written by Python 2; their byte strings are UTF-8 text.
    return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()


REFER_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}


def read_refcoco(refs_path: str, instances_path: str, dataset: str = "refcoco", split: str | None = None,
                 image_root: str = "", task: str = "rec", variety_seed: int | None = None) -> ListDataset:
    """RefCOCO / RefCOCO+ / RefCOCOg from the `refer` release: `refs(unc).p` / `refs(umd).p`
    (a pickled list of refs) plus that folder's COCO-style `instances.json`.

    One sample per referring sentence. `task="rec"` asks for the box (`Answer: [..]`),
    `task="reg"` gives the box and expects the sentence. Boxes are COCO pixel xywh of the
    ref's annotation, normalised by the image size from `instances.json`.
    """
    if dataset not in REFER_SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(REFER_SPLITS)}")
    if split is not None and split not in REFER_SPLITS[dataset]:
        raise ValueError(f"{dataset} has no split {split!r}; expected one of {REFER_SPLITS[dataset]}")
    if task not in ("rec", "reg"):
        raise ValueError(f"task must be 'rec' or 'reg', got {task!r}")
    refs = _list(safe_load_pickle(refs_path), refs_path, "the top level")
    inst = _load_json(instances_path, "COCO instances file")
    images = {}
    for img in _list(_get(inst, "images", instances_path, "the top level"), instances_path, "'images'"):
        images[_get(img, "id", instances_path, "an image")] = (
            str(_get(img, "file_name", instances_path, "an image")),
            float(_get(img, "width", instances_path, "an image")),
            float(_get(img, "height", instances_path, "an image")),
        )
    boxes = {}
    for ann in _list(_get(inst, "annotations", instances_path, "the top level"), instances_path, "'annotations'"):
        boxes[_get(ann, "id", instances_path, "an annotation")] = _coco_bbox(ann, instances_path)
    samples = []
    for ref in refs:
        ref_split = str(_get(ref, "split", refs_path, "a ref"))
        if split is not None and ref_split != split:
            continue
        ref_id = _get(ref, "ref_id", refs_path, "a ref")
        ann_id = _get(ref, "ann_id", refs_path, f"ref {ref_id}")
        image_id = _get(ref, "image_id", refs_path, f"ref {ref_id}")
        if ann_id not in boxes:
            raise DatasetFormatError(f"{instances_path}: no annotation {ann_id} (needed by ref {ref_id})")
        if image_id not in images:
            raise DatasetFormatError(f"{instances_path}: no image {image_id} (needed by ref {ref_id})")
        file_name, width, height = images[image_id]
        box = xywh_to_normalized_xyxy(*boxes[ann_id], width, height)
        for sent in _list(_get(ref, "sentences", refs_path, f"ref {ref_id}"), refs_path, f"sentences of {ref_id}"):
            text = str(_get(sent, "sent", refs_path, f"a sentence of ref {ref_id}")).strip()
            sid = f"{dataset}/{ref_id}/{_get(sent, 'sent_id', refs_path, f'a sentence of ref {ref_id}')}"
            if task == "rec":
                question = prompts.rec_prompt(text, templates.choice_for(sid, variety_seed))
                answer = rec_target(box)
            else:
                question = prompts.reg_prompt(box, templates.choice_for(sid, variety_seed))
                answer = text
            samples.append(Sample(
                id=sid, question=question, answer=answer, task=TaskKind.REGION, task_name=task, source=dataset,
                split=ref_split, image_path=os.path.join(image_root, file_name),
                image_size=(int(width), int(height)), regions=[RegionTarget(text, box)], answers=[answer],
            ))
    return ListDataset(samples)


def read_visual_genome(region_path: str, image_data_path: str, image_root: str = "", split: str = "train",
                       task: str = "reg", variety_seed: int | None = None) -> ListDataset:
    """Visual Genome `region_descriptions.json` (list of images, each with `regions` holding
    pixel `x`, `y`, `width`, `height` and `phrase`) plus `image_data.json` for image sizes.

    VG has no official split, so `split` only labels the samples. Image paths keep the
    release's folder (`VG_100K/` or `VG_100K_2/`) taken from the image's `url`.
    """
    if task not in ("rec", "reg"):
        raise ValueError(f"task must be 'rec' or 'reg', got {task!r}")
    regions_data = _list(_load_json(region_path, "Visual Genome region descriptions file"), region_path,
                         "the top level")
    image_data = _list(_load_json(image_data_path, "Visual Genome image data file"), image_data_path,
                       "the top level")
    images = {}
    for img in image_data:
        # v1.2+ uses `image_id`, v1.0 used `id`.
        image_id = img.get("image_id", img.get("id")) if isinstance(img, dict) else None
        if image_id is None:
            raise DatasetFormatError(f"{image_data_path}: an image has neither 'image_id' nor 'id'")
        url = str(img.get("url", ""))
        rel = "/".join(url.split("/")[-2:]) if url else f"{image_id}.jpg"
        images[image_id] = (rel, float(_get(img, "width", image_data_path, f"image {image_id}")),
                            float(_get(img, "height", image_data_path, f"image {image_id}")))
    samples = []
    for entry in regions_data:
        image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
        if image_id is None:
            raise DatasetFormatError(f"{region_path}: an entry has neither 'id' nor 'image_id'")
        if image_id not in images:
            raise DatasetFormatError(f"{image_data_path}: no image {image_id} (needed by {region_path})")
        rel, width, height = images[image_id]
        for reg in _list(_get(entry, "regions", region_path, f"image {image_id}"), region_path,
                         f"regions of {image_id}"):
            where = f"a region of image {image_id}"
            box = xywh_to_normalized_xyxy(
                float(_get(reg, "x", region_path, where)), float(_get(reg, "y", region_path, where)),
                float(_get(reg, "width", region_path, where)), float(_get(reg, "height", region_path, where)),
                width, height,
            )
            phrase = str(_get(reg, "phrase", region_path, where)).strip()
            sid = f"vg/{image_id}/{_get(reg, 'region_id', region_path, where)}"
            if task == "reg":
                question = prompts.reg_prompt(box, templates.choice_for(sid, variety_seed))
                answer = phrase
            else:
                question = prompts.rec_prompt(phrase, templates.choice_for(sid, variety_seed))
                answer = rec_target(box)
            samples.append(Sample(
                id=sid, question=question, answer=answer, task=TaskKind.REGION, task_name=task,
                source="visual_genome", split=split, image_path=os.path.join(image_root, rel),
                image_size=(int(width), int(height)), regions=[RegionTarget(phrase, box)], answers=[answer],
            ))
    return ListDataset(samples)


# ---------------------------------------------------------------------------------------
# Your own scenes: detection labels and free-form instructions
# ---------------------------------------------------------------------------------------

def plural(noun: str) -> str:
    """English plural of a category name ("mug" -> "mugs", "box" -> "boxes"), for prompts that
    read it as a plural; multi-word names pluralise their last word."""
    head, _, last = noun.rpartition(" ")
    if last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def read_coco_instances(path: str, image_root: str = "", split: str | None = None,
                        variety_seed: int | None = None) -> ListDataset:
    """COCO `instances_<split>.json` (what CVAT, Label Studio and most labelling tools export) as
    grounding and counting samples, per image:

    - REC "the <category>" -> its box, and REG back, for every object whose category is unique
      in the image (a repeated category has no unambiguous name from labels alone);
    - "find all <categories>" -> every box of that category, left to right;
    - "How many <categories> are there?" for every category present, and once for a category
      of the file that the image does not show (answer 0), so the model also learns absence.

    Crowd annotations (`iscrowd: 1`) are skipped. Tags are the image's category names.
    """
    data = _load_json(path, "COCO instances file")
    split = split or _split_from_name(path, "instances_")
    categories = {}
    for cat in _list(_get(data, "categories", path, "the top level"), path, "'categories'"):
        categories[_get(cat, "id", path, "a category")] = str(_get(cat, "name", path, "a category")).strip()
    images = {}
    for img in _list(_get(data, "images", path, "the top level"), path, "'images'"):
        images[_get(img, "id", path, "an image")] = (
            str(_get(img, "file_name", path, "an image")),
            float(_get(img, "width", path, "an image")), float(_get(img, "height", path, "an image")),
        )
    objects: dict[Any, list[tuple[str, tuple[float, float, float, float]]]] = {image_id: [] for image_id in images}
    for ann in _list(_get(data, "annotations", path, "the top level"), path, "'annotations'"):
        if isinstance(ann, dict) and ann.get("iscrowd"):
            continue
        image_id = _get(ann, "image_id", path, "an annotation")
        category_id = _get(ann, "category_id", path, "an annotation")
        if image_id not in images:
            raise DatasetFormatError(f"{path}: annotation {ann.get('id')} refers to unknown image {image_id}")
        if category_id not in categories:
            raise DatasetFormatError(f"{path}: annotation {ann.get('id')} has unknown category {category_id}")
        _, width, height = images[image_id]
        box = xywh_to_normalized_xyxy(*_coco_bbox(ann, path), width, height)
        objects[image_id].append((categories[category_id], box))
    names = sorted(set(categories.values()))
    samples: list[Sample] = []
    for image_id, objs in objects.items():
        file_name, width, height = images[image_id]
        present = sorted({name for name, _ in objs})
        common = {"source": "coco_instances", "split": split, "image_path": os.path.join(image_root, file_name),
                  "image_size": (int(width), int(height)), "tags": present}
        prefix = f"coco_instances/{image_id}"
        for name in present:
            boxes = sorted((box for n, box in objs if n == name), key=lambda b: (b[0] + b[2], b[1]))
            regions = [RegionTarget(f"the {name}", box) for box in boxes]
            sid = f"{prefix}/find_all/{name}"
            samples.append(Sample(
                id=sid, question=prompts.find_all_prompt(plural(name), templates.choice_for(sid, variety_seed)),
                answer=boxes_target(boxes), task=TaskKind.REGION, task_name="find_all", regions=regions,
                count=len(boxes), **common,
            ))
            if len(boxes) == 1:
                rec_id, reg_id = f"{prefix}/rec/{name}", f"{prefix}/reg/{name}"
                for sid, task, question, answer in (
                    (rec_id, "rec", prompts.rec_prompt(f"the {name}", templates.choice_for(rec_id, variety_seed)),
                     rec_target(boxes[0])),
                    (reg_id, "reg", prompts.reg_prompt(boxes[0], templates.choice_for(reg_id, variety_seed)),
                     f"the {name}"),
                ):
                    samples.append(Sample(id=sid, question=question, answer=answer, task=TaskKind.REGION,
                                          task_name=task, regions=regions, answers=[answer], **common))
        absent = [name for name in names if name not in present]
        counted = present + ([absent[templates.choice_for(prefix, 0) % len(absent)]] if absent else [])
        for name in counted:
            n = sum(o == name for o, _ in objs)
            samples.append(Sample(
                id=f"{prefix}/count/{name}", question=f"How many {plural(name)} are there?", answer=str(n),
                task=TaskKind.IMAGE, task_name="count", count=n, answers=[str(n)], **common,
            ))
    return ListDataset(samples)


REGION_TASKS = frozenset({"rec", "reg", "grounded_caption", "find_all"})
TASK_NAMES = frozenset({"caption", "vqa", "yesno", "count", "attribute"}) | REGION_TASKS


def read_instructions(path: str, image_root: str = "", split: str = "train") -> ListDataset:
    """Free-form instruction data, one JSON object per line:

        {"image": "shelf/0001.jpg", "question": "Is the drawer open?", "answer": "no"}
        {"image": "shelf/0002.jpg", "question": "Where is the red mug?", "boxes": [[412, 80, 470, 151]]}

    `image` is relative to `image_root`. `boxes` are pixel [x1, y1, x2, y2] of the image; a row
    with boxes and no `answer` gets the box answer (`Answer: [..]`, normalised, 3 decimals).
    Optional: `task` (caption, vqa, yesno, count, attribute, rec, reg, grounded_caption,
    find_all), `tags` (list of strings), `width` / `height` (read from the image file when boxes
    need them), `id`.

    A row without `task` is routed as lion-ask and the node route a question asked with
    task=auto (`prompts.infer_task`), so training, lion-eval and deployment use the same router
    row, and is scored by its kind (`question_kind`): boxes as REC (one) or find-all (several),
    "how many" with a count as counting, a yes/no question answered yes or no as yes/no.
    """
    samples = []
    for line_no, rec in _jsonl_records(path, "instruction jsonl file"):
        where = f"line {line_no}"
        image_path = os.path.join(image_root, str(_get(rec, "image", path, where)))
        question = str(_get(rec, "question", path, where)).strip()
        if not question:
            raise DatasetFormatError(f"{path}:{line_no}: empty question")
        task_name = str(rec.get("task", ""))
        if task_name and task_name not in TASK_NAMES:
            raise DatasetFormatError(f"{path}:{line_no}: unknown task {task_name!r}; expected one of "
                                     f"{sorted(TASK_NAMES)}")
        regions = []
        if "boxes" in rec:
            width, height = _image_size(rec, image_path, path, line_no)
            for box in _list(rec["boxes"], path, f"boxes of {where}"):
                if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                    raise DatasetFormatError(f"{path}:{line_no}: each box must be [x1, y1, x2, y2] in pixels")
                regions.append(RegionTarget(question, normalize_box(*box, width, height)))
        if "answer" in rec:
            answer = str(rec["answer"]).strip()
        elif regions:
            answer = boxes_target([r.box for r in regions])
        else:
            raise DatasetFormatError(f"{path}:{line_no}: needs an 'answer' or 'boxes'")
        if task_name:
            task = TaskKind.REGION if task_name in REGION_TASKS else TaskKind.IMAGE
        else:
            task, task_name = prompts.infer_task(question), question_kind(question, answer, len(regions))
        count = parse_count(answer) if task_name == "count" else None
        verdict = parse_verdict(answer) if task_name == "yesno" else None
        if task_name == "count" and count is None:
            raise DatasetFormatError(f"{path}:{line_no}: a count question needs one number as its answer, "
                                     f"got {answer!r}")
        if task_name == "yesno" and verdict is None:
            raise DatasetFormatError(f"{path}:{line_no}: a yes/no question needs an answer that says yes or no, "
                                     f"got {answer!r}")
        samples.append(Sample(
            id=str(rec.get("id", f"instructions/{split}/{line_no}")), question=question, answer=answer,
            task=task, task_name=task_name, source="instructions", split=split, image_path=image_path,
            regions=regions, count=count, yes_no=None if verdict is None else verdict == "yes",
            tags=[str(t) for t in _list(rec.get("tags", []), path, f"tags of {where}")], answers=[answer],
        ))
    return ListDataset(samples)


# The words a yes/no question opens with ("Is there ...", "Can you see ...", "Does it ...").
_YES_NO_OPENING = re.compile(
    r"^\W*(?:is|are|am|was|were|do|does|did|can|could|will|would|shall|should|may|might|must|has|have|had)\b",
    re.IGNORECASE,
)


def question_kind(question: str, answer: str, num_boxes: int) -> str:
    """The task name an instruction row without `task` is scored as, from what it asks and what
    its label answers: boxes are REC (one) or find-all (several); a question the runtime routes to
    the region row names a region (REG); "how many" answered with a number is counting; a yes/no
    question (opening with is/are/do/can/...) answered with a verdict, or any question answered
    with a bare "yes"/"no", is yes/no; anything else is open VQA."""
    if num_boxes:
        return "rec" if num_boxes == 1 else "find_all"
    if prompts.infer_task(question) == TaskKind.REGION:
        return "reg"
    if re.search(r"\bhow many\b", question, re.IGNORECASE) and parse_count(answer) is not None:
        return "count"
    verdict = parse_verdict(answer)
    if verdict is not None and (_YES_NO_OPENING.match(question) or answer.strip(" .!").lower() == verdict):
        return "yesno"
    return "vqa"


def _image_size(rec: dict, image_path: str, path: str, line_no: int) -> tuple[float, float]:
    if "width" in rec and "height" in rec:
        return float(rec["width"]), float(rec["height"])
    try:
        width, height = image_size(image_path)
    except ImageReadError as e:
        raise DatasetFormatError(f"{path}:{line_no}: boxes need the image size and {image_path} "
                                 f"could not be read ({e}); add 'width' and 'height'") from e
    return float(width), float(height)


__all__ = [
    "REFER_SPLITS",
    "DatasetFormatError",
    "RestrictedUnpickler",
    "plural",
    "question_kind",
    "read_aokvqa",
    "read_coco_captions",
    "read_coco_instances",
    "read_gqa",
    "read_instructions",
    "read_okvqa",
    "read_refcoco",
    "read_visual_genome",
    "read_vqav2",
    "read_vsr",
    "safe_load_pickle",
]
