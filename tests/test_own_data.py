"""Training and evaluating on your own scenes: COCO instances and instruction jsonl files on disk,
read through the same `FileSource` table by lion-train (`data.files`) and lion-eval.

The files are written here in the exact layouts labelling tools export (COCO `instances.json`)
and that `read_instructions` documents; the images are synthetic scenes saved as PNG files.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lion_ros.api import TaskKind
from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.data.images import ImageReadError, load_rgb
from lion_ros.data.readers import DatasetFormatError, plural, read_coco_instances, read_instructions
from lion_ros.data.sources import FORMATS, FileSource, load_source
from lion_ros.data.synthetic import SyntheticConfig, SyntheticDataset
from lion_ros.train import TrainConfig, train


def parsed(answer: str) -> list[tuple[float, ...]]:
    return [tuple(box) for _, box in DEFAULT_CODEC.parse_normalized(answer)]


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def coco_from_synthetic(root: Path, num_scenes: int) -> Path:
    """Synthetic train scenes as `images/<n>.png` + a COCO instances file of their visible boxes."""
    dataset = SyntheticDataset("train", num_scenes, SyntheticConfig(), cache_size=1)
    categories = sorted({o.category for i in range(num_scenes) for o in dataset.scene(i).objects})
    cat_id = {name: k + 1 for k, name in enumerate(categories)}
    images, annotations = [], []
    for i in range(num_scenes):
        scene = dataset.scene(i)
        write_png(root / "images" / f"{i:04d}.png", scene.rgb)
        images.append({"id": 100 + i, "file_name": f"{i:04d}.png", "width": scene.width, "height": scene.height})
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": cat_id[obj.category],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path = root / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": v, "name": k} for k, v in cat_id.items()]}))
    return path


def test_plural() -> None:
    assert [plural(w) for w in ("mug", "box", "glass", "battery", "tray", "coffee cup")] == [
        "mugs", "boxes", "glasses", "batteries", "trays", "coffee cups"]


def test_coco_instances_make_grounding_and_counting_samples(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "mug"}, {"id": 2, "name": "box"}, {"id": 3, "name": "drill"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 0, 50, 50]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 50, 40, 50]},
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 200, 100], "iscrowd": 1},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [10, 10, 10, 10]},
        ],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    samples = {s.id: s for s in read_coco_instances(str(path), image_root="imgs")}

    mugs = samples["coco_instances/1/find_all/mug"]
    assert mugs.task == TaskKind.REGION and mugs.count == 2 and mugs.split == "val"
    assert [r.box for r in mugs.regions] == [(0.0, 0.0, 0.1, 0.2), (0.5, 0.0, 0.75, 0.5)]  # left to right
    assert parsed(mugs.answer) == [r.box for r in mugs.regions]
    assert "mugs" in mugs.question and mugs.image_path == "imgs/a.jpg" and mugs.tags == ["box", "mug"]
    # Unique category: REC and REG; repeated mug: no REC (no unambiguous name from labels).
    rec = samples["coco_instances/1/rec/box"]
    assert rec.task_name == "rec" and parsed(rec.answer) == [(0.2, 0.5, 0.4, 1.0)]
    assert samples["coco_instances/1/reg/box"].answer == "the box"
    assert "coco_instances/1/rec/mug" not in samples
    # Counts for the present categories and one absent one (the crowd drill does not count).
    assert samples["coco_instances/1/count/mug"].count == 2
    assert samples["coco_instances/1/count/box"].count == 1
    assert samples["coco_instances/1/count/drill"].count == 0
    assert samples["coco_instances/1/count/drill"].question == "How many drills are there?"
    assert samples["coco_instances/2/rec/drill"].regions[0].box == (0.1, 0.1, 0.2, 0.2)

    data["annotations"].append({"id": 9, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match="unknown image 7"):
        read_coco_instances(str(path))
    data["annotations"][-1] = {"id": 9, "image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1]}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match="unknown category 42"):
        read_coco_instances(str(path))


def test_instruction_jsonl(tmp_path: Path) -> None:
    write_png(tmp_path / "imgs" / "shelf.png", np.zeros((50, 200, 3), np.uint8))
    rows = [
        {"image": "shelf.png", "question": "Is the drawer open?", "answer": "no", "task": "yesno"},
        {"image": "shelf.png", "question": "Where is the red mug?", "boxes": [[20, 5, 60, 45]]},
        {"image": "shelf.png", "question": "Find all screws.", "boxes": [[0, 0, 10, 10], [100, 0, 110, 10]],
         "width": 400, "height": 100, "tags": ["screw"], "id": "mine/3"},
        {"image": "shelf.png", "question": "How many screws are there?", "answer": "2", "task": "count"},
        {"image": "shelf.png", "question": "What is on the shelf?", "answer": "a toolbox"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = list(read_instructions(str(path), image_root=str(tmp_path / "imgs")))
    yes_no, rec, find_all, count, vqa = samples
    assert (yes_no.task_name, yes_no.yes_no, yes_no.task) == ("yesno", False, TaskKind.IMAGE)
    # Pixel boxes normalised by the size read from the PNG header (200x50) ...
    assert rec.task_name == "rec" and rec.task == TaskKind.REGION
    assert parsed(rec.answer) == [(0.1, 0.1, 0.3, 0.9)]
    # ... or by the width/height given in the row.
    assert find_all.task_name == "find_all" and find_all.id == "mine/3" and find_all.tags == ["screw"]
    assert [r.box for r in find_all.regions] == [(0.0, 0.0, 0.025, 0.1), (0.25, 0.0, 0.275, 0.1)]
    assert count.count == 2 and vqa.task_name == "vqa" and vqa.answer == "a toolbox"

    for bad, message in [
        ({"image": "x.png", "question": "  ", "answer": "a"}, "empty question"),
        ({"image": "x.png", "question": "q"}, "needs an 'answer' or 'boxes'"),
        ({"image": "x.png", "question": "q", "answer": "a", "task": "dance"}, "unknown task 'dance'"),
        ({"image": "missing.png", "question": "q", "boxes": [[0, 0, 1, 1]]}, "add 'width' and 'height'"),
        ({"image": "shelf.png", "question": "q", "boxes": [[0, 0, 1]]}, r"\[x1, y1, x2, y2\]"),
    ]:
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DatasetFormatError, match=message):
            read_instructions(str(path), image_root=str(tmp_path / "imgs"))
    path.write_text("{not json\n")
    with pytest.raises(DatasetFormatError, match="data.jsonl:1: not valid JSON"):
        read_instructions(str(path))


def test_question_lines_without_task_are_routed_and_scored_by_their_question(tmp_path: Path) -> None:
    from lion_ros.eval.metrics import score_samples
    from lion_ros.prompts import infer_task

    rows = [
        ({"question": "Is there a wrench?", "answer": "yes"}, "yesno", TaskKind.IMAGE),
        ({"question": "Can you see a tape roll?", "answer": "No, there is none."}, "yesno", TaskKind.IMAGE),
        ({"question": "Tell me whether the drawer is open.", "answer": "no"}, "yesno", TaskKind.IMAGE),
        ({"question": "How many screwdrivers are there?", "answer": "3"}, "count", TaskKind.IMAGE),
        ({"question": "Where is the tape?", "boxes": [[0, 0, 50, 50]]}, "rec", TaskKind.REGION),
        # A bare expression: the runtime (task=auto) routes it to the image row, so training and
        # lion-eval do too; its box answer is still scored as REC.
        ({"question": "the red wrench", "boxes": [[0, 0, 50, 50]]}, "rec", TaskKind.IMAGE),
        ({"question": "Find all wrenches.", "boxes": [[0, 0, 5, 5], [10, 0, 15, 5]]}, "find_all", TaskKind.REGION),
        ({"question": "Describe the region [0.1,0.2,0.3,0.4].", "answer": "a wrench"}, "reg", TaskKind.REGION),
        ({"question": "What colour is the tape?", "answer": "blue"}, "vqa", TaskKind.IMAGE),
        ({"question": "How many of them are usable?", "answer": "most"}, "vqa", TaskKind.IMAGE),
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"image": "mat.png", "width": 100, "height": 100, **row}) + "\n"
                            for row, _, _ in rows))
    samples = list(read_instructions(str(path)))
    assert [(s.task_name, s.task) for s in samples] == [(name, task) for _, name, task in rows]
    assert all(s.task == infer_task(s.question) for s in samples)
    assert [s.yes_no for s in samples[:3]] == [True, False, False] and samples[3].count == 3
    # "Is there a wrench?" answered "yes" scores as a right yes/no answer, not an open-VQA miss.
    predictions = {s.id: s.answer for s in samples}
    scores = score_samples(predictions, samples)
    assert scores["yesno"]["accuracy"] == 1.0 and scores["count"]["accuracy"] == 1.0
    assert scores["rec"]["accuracy"] == 1.0 and scores["vqa"]["n"] == 2

    for bad, message in [({"question": "How many?", "answer": "a few", "task": "count"}, "needs one number"),
                         ({"question": "Is it open?", "answer": "maybe", "task": "yesno"}, "says yes or no")]:
        path.write_text(json.dumps({"image": "mat.png", **bad}) + "\n")
        with pytest.raises(DatasetFormatError, match=message):
            read_instructions(str(path))


def test_file_source_spec_is_checked(tmp_path: Path) -> None:
    assert {"coco_instances", "instructions", "vqav2", "refcoco", "visual_genome", "coco_captions"} <= set(FORMATS)
    with pytest.raises(ValueError, match="unknown dataset format 'yolo'"):
        FileSource("yolo", "x")
    with pytest.raises(ValueError, match="needs 'annotations'"):
        FileSource("refcoco", "refs(unc).p")
    with pytest.raises(ValueError, match="needs 'split'"):
        FileSource("vsr", "x.jsonl")
    with pytest.raises(FileNotFoundError, match="COCO instances file not found"):
        load_source(FileSource("coco_instances", str(tmp_path / "nope.json")))
    path = coco_from_synthetic(tmp_path, 2)
    everything = load_source(FileSource("coco_instances", str(path)))
    assert len(load_source(FileSource("coco_instances", str(path), limit=3))) == 3 < len(everything)


def test_load_rgb_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png", np.full((4, 6, 3), 7, np.uint8))
    assert load_rgb(str(tmp_path / "ok.png")).shape == (4, 6, 3)
    with pytest.raises(ImageReadError, match="image not found"):
        load_rgb(str(tmp_path / "missing.png"))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="cannot read image"):
        load_rgb(str(tmp_path / "corrupt.png"))
    with pytest.raises(ImageReadError, match="exceeds 10 pixels"):
        load_rgb(str(tmp_path / "ok.png"), max_pixels=10)


def files_config(tokenizer_dir: Path, out: Path, files: list[dict], **data: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "stage": "stage0",
        "model": {"preset": "lion-tiny", "tokenizer_dir": str(tokenizer_dir)},
        "data": {"files": files, "images_per_batch": 2, "questions_per_image": 3, **data},
        "optim": {"lr": 3e-3, "warmup_steps": 1, "steps": 12},
        "run": {"output_dir": str(out), "log_every": 1, "checkpoint_every": 1000, "threads": 1},
    })


def test_training_on_coco_instances_reduces_the_loss(tokenizer_dir: Path, tmp_path: Path) -> None:
    path = coco_from_synthetic(tmp_path / "data", 4)
    files = [{"format": "coco_instances", "path": str(path), "image_root": str(tmp_path / "data" / "images")}]
    result = train(files_config(tokenizer_dir, tmp_path / "run", files))
    with (tmp_path / "run" / "log.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert result.model_dir is not None and (result.model_dir / "model.safetensors").exists()


def test_training_on_files_fails_early_and_clearly(tokenizer_dir: Path, tmp_path: Path) -> None:
    path = coco_from_synthetic(tmp_path / "data", 2)
    wrong_root = [{"format": "coco_instances", "path": str(path), "image_root": str(tmp_path / "elsewhere")}]
    with pytest.raises(FileNotFoundError, match=r"2 of 2 images of data.files not found.*check image_root"):
        train(files_config(tokenizer_dir, tmp_path / "run", wrong_root))
    with pytest.raises(ValueError, match="dense_supervision needs per-patch labels"):
        files_config(tokenizer_dir, tmp_path / "run", wrong_root, dense_supervision=1.0)
    with pytest.raises(ValueError, match="each data.files entry is a mapping"):
        files_config(tokenizer_dir, tmp_path / "run", [str(path)])
    with pytest.raises(ValueError, match="unknown FileSource keys"):
        files_config(tokenizer_dir, tmp_path / "run", [{"format": "coco_instances", "path": "x", "root": "y"}])


def test_file_batches_keep_the_stage_tasks_and_name_a_corrupt_image(tokenizer_dir: Path, tmp_path: Path) -> None:
    from lion_ros.preprocess import PreprocessConfig
    from lion_ros.tokenization import LionTokenizers
    from lion_ros.train.data import STAGE_TASKS, Collator, FileBatches

    path = coco_from_synthetic(tmp_path, 3)
    files = [{"format": "coco_instances", "path": str(path), "image_root": str(tmp_path / "images")}]
    config = files_config(tokenizer_dir, tmp_path / "run", files, images_per_batch=3, questions_per_image=50)
    collator = Collator(LionTokenizers.load(tokenizer_dir), config.data, PreprocessConfig(image_size=32), 128)
    image_level = FileBatches(config.data, collator, STAGE_TASKS["stage1"], seed=0)
    counts = sum(s.task_name == "count" for group in image_level.samples.values() for s in group)
    batch = image_level[0]
    assert batch.pixel_values.shape == (3, 3, 32, 32)
    assert batch.num_questions == counts and set(batch.task_index.tolist()) == {int(TaskKind.IMAGE)}
    assert batch.image_index.tolist() == sorted(batch.image_index.tolist())

    everything = FileBatches(config.data, collator, STAGE_TASKS["stage3"], seed=0)
    assert set(everything[0].task_index.tolist()) == {int(TaskKind.IMAGE), int(TaskKind.REGION)}
    (tmp_path / "images" / "0001.png").write_bytes(b"truncated")
    with pytest.raises(ImageReadError, match="0001.png"):
        everything[0]


def test_lion_eval_scores_your_coco_labels(model_dir: Path, tmp_path: Path) -> None:
    from lion_ros.eval.cli import main

    path = coco_from_synthetic(tmp_path, 2)
    out = tmp_path / "eval"
    assert main(["--model", str(model_dir), "--split", "none", "--coco-instances", str(path),
                 "--image-root", str(tmp_path / "images"), "--max-new-tokens", "12", "--threads", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())["sources"]["coco-instances"]
    expected = load_source(FileSource("coco_instances", str(path)))
    assert report["num_samples"] == len(expected)
    scores = report["per_task"]
    assert set(scores) == {s.task_name for s in expected} >= {"find_all", "count"}
    assert scores["count"]["n"] == sum(s.task_name == "count" for s in expected)


def test_every_packaged_training_config_loads() -> None:
    from lion_ros.train.cli import packaged_config

    names = sorted(p.name for p in packaged_config("x").parent.glob("*.yaml") if not p.name.endswith("-lineage.yaml"))
    assert {"finetune.yaml", "lion-4b-stage1.yaml", "lion-4b-stage2.yaml", "lion-4b-stage3.yaml",
            "nano-stage0.yaml"} <= set(names)
    configs = {name: TrainConfig.load(packaged_config(name)) for name in names}
    # The lion-4b stages read the public sets of their level: image-level for stage 1, region-level for 2.
    stage1, stage2, stage3 = (configs[f"lion-4b-stage{n}.yaml"].data.files for n in (1, 2, 3))
    assert {f.format for f in stage1} == {"coco_captions", "vqav2", "okvqa", "aokvqa", "gqa"}
    assert {f.format for f in stage2} == {"refcoco", "refcoco+", "refcocog", "visual_genome"}
    assert stage3 == stage1 + stage2
    # nano answers spatial questions in the reasoned form in every stage, so no stage undoes another's answers.
    assert all(configs[name].data.synthetic.spatial_answer == "reasoned" for name in names if name.startswith("nano-"))


def test_finetune_config_continues_the_shipped_nano_from_any_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's command, run outside the repository: finetune.yaml finds the installed lion-nano
    (package://), takes its tokenizers and decoding settings along, validates and keeps the best."""
    import torch

    from lion_ros.api import GENERATION_CONFIG_NAME
    from lion_ros.model import LionModel, parameter_group
    from lion_ros.tokenization import LionTokenizers
    from lion_ros.train.cli import main
    from lion_ros.train.config import PACKAGE_DIR
    from lion_ros.train.stages import TRAINABLE_GROUPS

    nano = PACKAGE_DIR / "assets" / "lion-nano"
    coco_from_synthetic(tmp_path / "labels", 2)
    monkeypatch.chdir(tmp_path)
    files = "[{format: coco_instances, path: labels/instances_train.json, image_root: labels/images}]"
    assert main(["--config", "finetune.yaml", f"data.files={files}", f"data.val_files={files}", "optim.steps=2",
                 "optim.warmup_steps=1", "data.images_per_batch=2", "data.num_workers=0", "run.threads=1",
                 "run.checkpoint_every=2"]) == 0
    out = tmp_path / "runs" / "finetune"
    nano_tokenizers = LionTokenizers.load(nano)
    for saved in (out / "model", out / "checkpoints" / "step-0000002", out / "best"):
        assert json.loads((saved / GENERATION_CONFIG_NAME).read_text()) == json.loads(
            (nano / GENERATION_CONFIG_NAME).read_text())
        tokenizers = LionTokenizers.load(saved)
        assert tokenizers.t5.get_vocab() == nano_tokenizers.t5.get_vocab()
        assert tokenizers.qformer.get_vocab() == nano_tokenizers.qformer.get_vocab()
    assert json.loads((out / "best" / "best.json").read_text())["metric"] == "find_all_f1@0.5"

    before = LionModel.from_pretrained(nano).checkpoint_tensors()
    after = LionModel.from_pretrained(out / "model").checkpoint_tensors()
    assert before.keys() == after.keys()
    changed = {parameter_group(n) for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= TRAINABLE_GROUPS["mixed"]  # ViT and T5 frozen, the rest fine-tuned
    # nano's trained adapters are continued (two steps at lr 1e-4 move them by ~1e-4), not re-initialised.
    adapters = [n for n in before if parameter_group(n) == "adapters"]
    assert "adapters" in changed and max(float((after[n] - before[n]).detach().abs().max()) for n in adapters) < 1e-2
