"""Fine-tuning usability on short real runs of lion-tiny: packaged paths, the starting model's
tokenizers and decoding settings in every saved model, runs stopped by time, the warm-up warning,
and validation during training with lion-eval's own scoring and a kept best model."""
from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_own_data import coco_from_synthetic

from lion_ros.api import GENERATION_CONFIG_NAME, model_generation_defaults
from lion_ros.tokenization import LionTokenizers
from lion_ros.train import TrainConfig, train
from lion_ros.train.cli import main as lion_train
from lion_ros.train.cli import packaged_config
from lion_ros.train.config import PACKAGE_DIR
from lion_ros.train.validation import LOWER_IS_BETTER, Validation


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic scenes as COCO labels (images/, instances_train.json) and a question file
    without `task` fields, as a user writes one."""
    root = tmp_path_factory.mktemp("labels")
    coco_from_synthetic(root, 3)
    rows = [{"image": "0000.png", "question": "Is there a cup?", "answer": "yes"},
            {"image": "0001.png", "question": "How many bowls are there?", "answer": "2"},
            {"image": "0002.png", "question": "Where is the plate?", "boxes": [[10, 20, 200, 220]]}]
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def coco(labels: Path, **extra: object) -> dict:
    return {"format": "coco_instances", "path": str(labels / "instances_train.json"),
            "image_root": str(labels / "images"), **extra}


def question_file(labels: Path, **extra: object) -> dict:
    return {"format": "instructions", "path": str(labels / "questions.jsonl"), "image_root": str(labels / "images"),
            **extra}


def tiny(tokenizer_dir: Path | None, out: Path, labels: Path, *, stage: str = "stage0", init: dict | None = None,
         optim: dict | None = None, run: dict | None = None, data: dict | None = None) -> TrainConfig:
    """A lion-tiny run on the labels: from scratch with `tokenizer_dir`, or from `init`."""
    model = {"preset": "lion-tiny", **({"tokenizer_dir": str(tokenizer_dir)} if tokenizer_dir else {})}
    return TrainConfig.from_dict({
        "stage": stage, "model": model, "init": init or {"kind": "scratch"},
        "data": {"files": [coco(labels)], "images_per_batch": 2, "questions_per_image": 2, **(data or {})},
        "optim": {"lr": 3e-3, "warmup_steps": 1, "steps": 2, **(optim or {})},
        "run": {"output_dir": str(out), "log_every": 1, "checkpoint_every": 1000, "threads": 1, **(run or {})},
    })


def same_weights(a: Path, b: Path) -> bool:
    first, second = (load_file(d / "model.safetensors") for d in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_packaged_paths_resolve_from_any_folder_and_the_start_brings_its_tokenizers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    nano = PACKAGE_DIR / "assets" / "lion-nano"
    config = TrainConfig.load(packaged_config("finetune.yaml"))
    assert Path(config.init.path) == nano and Path(config.model.tokenizer_dir) == nano
    # One key names another starting model; its tokenizers come with it.
    config = TrainConfig.load(packaged_config("finetune.yaml"), [f"init.path={tmp_path / 'mine'}"])
    assert config.model.tokenizer_dir == str(tmp_path / "mine")
    # ... unless the run names other tokenizers.
    config = TrainConfig.load(packaged_config("finetune.yaml"), ["model.tokenizer_dir=package://assets/lion-nano",
                                                                 f"init.path={tmp_path / 'mine'}"])
    assert Path(config.model.tokenizer_dir) == nano
    with pytest.raises(FileNotFoundError, match=re.escape("init.path: package://assets/lion-giga is not part of")):
        TrainConfig.load(packaged_config("finetune.yaml"), ["init.path=package://assets/lion-giga"])
    with pytest.raises(ValueError, match=re.escape("run.best_metric must be one of lion-eval's headline metrics")):
        TrainConfig.load(packaged_config("finetune.yaml"), ["run.best_metric=rec_acc"])
    with pytest.raises(ValueError, match=re.escape("run.val_every must be >= 0")):
        TrainConfig.load(packaged_config("finetune.yaml"), ["run.val_every=-1"])
    with pytest.raises(ValueError, match=re.escape("model.tokenizer_dir is required when training from scratch")):
        train(TrainConfig.from_dict({"model": {"preset": "lion-tiny"}, "run": {"output_dir": str(tmp_path / "r")}}))


def test_every_saved_model_carries_the_starting_models_decoding_settings(tokenizer_dir: Path, labels: Path,
                                                                         tmp_path: Path) -> None:
    every_step = {"checkpoint_every": 1}
    scratch = train(tiny(tokenizer_dir, tmp_path / "scratch", labels, run=every_step))
    start = scratch.model_dir
    # A from-scratch model decodes its box answers without the reference's repetition penalty.
    assert model_generation_defaults(start) == {"repetition_penalty": 1.0}
    checkpoint = tmp_path / "scratch" / "checkpoints" / "step-0000002"
    assert model_generation_defaults(checkpoint) == {"repetition_penalty": 1.0}

    (start / GENERATION_CONFIG_NAME).write_text('{"repetition_penalty": 1.3}')
    from_start = {"kind": "pretrained", "path": str(start), "skip_groups": []}
    tuned = train(tiny(None, tmp_path / "tuned", labels, stage="mixed", init=from_start, run=every_step))
    start_vocab = LionTokenizers.load(start).t5.get_vocab()
    for saved in (tuned.model_dir, tmp_path / "tuned" / "checkpoints" / "step-0000001"):
        assert model_generation_defaults(saved) == {"repetition_penalty": 1.3}
        assert LionTokenizers.load(saved).t5.get_vocab() == start_vocab
        assert TrainConfig.load(saved / "train_config.yaml").init.path == str(start)

    # A starting model without generation_config.json was decoded with the reference's settings.
    (start / GENERATION_CONFIG_NAME).unlink()
    tuned = train(tiny(None, tmp_path / "reference", labels, stage="mixed", init=from_start))
    assert model_generation_defaults(tuned.model_dir) == {"repetition_penalty": 1.5}


def test_a_run_stopped_by_time_says_so_and_leaves_the_finished_model_alone(
        tokenizer_dir: Path, labels: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="lion_ros.train.trainer"):
        finished = train(tiny(tokenizer_dir, out, labels, optim={"warmup_steps": 5}))
    assert "optim.warmup_steps (5) >= optim.steps (2)" in caplog.text
    assert finished.model_dir == out / "model" and not finished.stopped_by_time
    weights = (out / "model" / "model.safetensors").read_bytes()

    # The same output folder, a run capped at 6 ms: it stops after its first step.
    caplog.clear()
    path = tmp_path / "capped.yaml"
    tiny(tokenizer_dir, out, labels, optim={"steps": 1000}, run={"max_minutes": 1e-4}).save(path)
    with caplog.at_level(logging.INFO):
        assert lion_train(["--config", str(path)]) == 0
    assert "stopped by time after 1 of 1000 steps (run.max_minutes=0.0001)" in caplog.text
    assert "stopped by time at step 1 of 1000" in caplog.text and "finished" not in caplog.text
    assert (out / "model" / "model.safetensors").read_bytes() == weights  # the finished run's model is kept
    partial = out / "model-partial"
    assert model_generation_defaults(partial) == {"repetition_penalty": 1.0}
    assert same_weights(partial, out / "checkpoints" / "step-0000001")  # resumable from there

    # With optim.schedule time the cap is the planned end: the decayed model is the final one.
    caplog.clear()
    timed = tmp_path / "timed"
    with caplog.at_level(logging.WARNING, logger="lion_ros.train.trainer"):
        result = train(tiny(tokenizer_dir, timed, labels, optim={"steps": 1000, "schedule": "time"},
                            run={"max_minutes": 1e-4}))
    assert result.stopped_by_time and result.model_dir == timed / "model" and not (timed / "model-partial").exists()
    assert "so this is the final model" in caplog.text


def logged(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_validation_scores_with_lion_eval_and_keeps_the_best_model(tokenizer_dir: Path, labels: Path,
                                                                   tmp_path: Path) -> None:
    from lion_ros.eval.cli import main as lion_eval

    out = tmp_path / "run"
    questions = question_file(labels, split="eval")  # lion-eval's split label for --instructions (in the ids)
    config = tiny(tokenizer_dir, out, labels, optim={"steps": 4},
                  data={"val_files": [coco(labels, limit=6), questions]},
                  run={"val_every": 2, "best_metric": "find_all_f1@0.5", "checkpoint_every": 2})
    result = train(config)

    rows = logged(out)
    validated = {int(row["step"]): row for row in rows if row["val_find_all_f1@0.5"]}
    assert sorted(validated) == [2, 4]
    assert all(row["loss"] == "" for row in validated.values())  # validation rows hold only val_* columns
    assert all(row["val_find_all_f1@0.5"] == "" for row in rows if row["loss"])
    scores = {step: float(row["val_find_all_f1@0.5"]) for step, row in validated.items()}
    # The task-less question file is routed and scored by its questions: yes/no and counting too.
    per_task = json.loads((out / "val" / "step-0000004" / "metrics.json").read_text())["sources"]["val"]["per_task"]
    assert per_task["yesno"]["n"] == 1 and per_task["count"]["n"] >= 1 and per_task["rec"]["n"] >= 1
    assert all(validated[4][f"val_{name}"] for name in ("spatial_yesno_acc", "counting_acc", "rec_acc@0.5"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, abs=1e-6)) for e in events.Scalars("val/find_all_f1@0.5")] == [
        (step, scores[step]) for step in (2, 4)]

    # best/ is the first model with the highest score, a whole model directory.
    best_step = max(scores, key=lambda step: (scores[step], -step))
    assert result.best_dir == out / "best"
    assert json.loads((out / "best" / "best.json").read_text()) == {
        "step": best_step, "metric": "find_all_f1@0.5", "value": pytest.approx(scores[best_step], abs=1e-6)}
    assert same_weights(out / "best", out / "checkpoints" / f"step-{best_step:07d}")
    assert model_generation_defaults(out / "best") == {"repetition_penalty": 1.0}

    # lion-eval on best/ with the same decoding answers every validation question as validation did.
    assert lion_eval(["--model", str(out / "best"), "--split", "none", "--coco-instances", coco(labels)["path"],
                      "--limit", "6", "--instructions", questions["path"], "--image-root", str(labels / "images"),
                      "--repetition-penalty", "1.0", "--threads", "1", "--out", str(tmp_path / "eval")]) == 0

    def answers(directory: Path) -> dict[str, str]:
        lines = (directory / "predictions.jsonl").read_text().splitlines()
        return {row["id"]: row["prediction"] for row in map(json.loads, lines)}

    assert answers(tmp_path / "eval") == answers(out / "val" / f"step-{best_step:07d}")

    with pytest.raises(ValueError, match=re.escape("run.best_metric caption_cider scores caption questions, which")):
        train(tiny(tokenizer_dir, tmp_path / "bad", labels, data={"val_files": [questions]},
                   run={"best_metric": "caption_cider"}))
    with pytest.raises(FileNotFoundError, match=re.escape("3 of 3 images of data.val_files not found")):
        train(tiny(tokenizer_dir, tmp_path / "bad", labels, data={"val_files": [coco(labels, image_root="nowhere")]}))


def test_best_is_the_first_highest_score_and_survives_a_resume(model_dir: Path, labels: Path, tmp_path: Path) -> None:
    from lion_ros.eval.cli import HEADLINE
    from lion_ros.model import LionModel

    lion, tokenizers = LionModel.from_pretrained(model_dir), LionTokenizers.load(model_dir)
    questions = question_file(labels)
    config = tiny(model_dir, tmp_path, labels, data={"val_files": [coco(labels), questions]},
                  run={"best_metric": "counting_acc"})
    validation = Validation(config, tmp_path, resumed=False)
    kept = [validation.keep_if_best(step, {"counting_acc": value}, lion, tokenizers)
            for step, value in ((2, 0.25), (4, 0.25), (6, 0.5), (8, 0.4))]
    assert kept == [True, False, True, False]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best == {"step": 6, "metric": "counting_acc", "value": 0.5}
    assert (tmp_path / "best" / "model.safetensors").is_file() and not (tmp_path / "best.saving").exists()
    # A resumed run has to beat the best so far; a fresh run in the same folder starts over.
    assert not Validation(config, tmp_path, resumed=True).keep_if_best(10, {"counting_acc": 0.45}, lion, tokenizers)
    assert Validation(config, tmp_path, resumed=False).keep_if_best(10, {"counting_acc": 0.45}, lion, tokenizers)

    # A rate where lower is better keeps the lowest.
    config.run.best_metric = "spatial_yesno_no_verdict_rate"
    validation = Validation(config, tmp_path / "rate", resumed=False)
    kept = [validation.keep_if_best(step, {config.run.best_metric: value}, lion, tokenizers)
            for step, value in ((2, 0.5), (4, 0.7), (6, 0.1))]
    assert kept == [True, False, True] and set(HEADLINE) >= LOWER_IS_BETTER
