"""lion-eval: report layout with a stub runtime, and the CLI end to end on a random lion-tiny."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lion_ros.api import Answer
from lion_ros.data.synthetic import SyntheticConfig
from lion_ros.eval.cli import HEADLINE, evaluate, main, synthetic_source
from lion_ros.model import LionConfig, LionModel
from lion_ros.train.config import TokenizerTraining
from lion_ros.train.tokenizer_training import build_nano_tokenizers


class EchoRuntime:
    """Answers every question with a fixed text; counts image encodings."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.encoded = 0

    def encode_image(self, rgb: np.ndarray) -> object:
        self.encoded += 1
        return object()

    def answer(self, image: object, question: str, *, tags=(), task=None, settings=None) -> Answer:
        return Answer(text=self.text, task=task)


def test_report_has_every_metric_and_encodes_each_image_once(tmp_path: Path) -> None:
    runtime = EchoRuntime("Answer: [0.100,0.100,0.500,0.500]")
    source = synthetic_source("test", 2)
    report = evaluate(runtime, [source], None, True, tmp_path, "stub", {"num_beams": 1})
    assert runtime.encoded == 2
    written = json.loads((tmp_path / "metrics.json").read_text())
    summary = written["sources"]["synthetic-test"]["summary"]
    assert list(summary) == list(HEADLINE)
    assert summary["vqav2_acc"] is None  # no VQAv2 samples in the synthetic split
    assert all(0.0 <= summary[k] <= 1.0 for k in ("rec_acc@0.5", "spatial_yesno_acc", "counting_acc", "attribute_acc"))
    markdown = (tmp_path / "metrics.md").read_text()
    assert all(key in markdown for key in HEADLINE)
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(source.samples) == report["sources"]["synthetic-test"]["num_samples"]


def test_an_answer_without_verdict_or_count_scores_zero_strict(tmp_path: Path) -> None:
    """"pink" to every question: strict yes/no and counting are 0, and the report says why;
    POPE's rule (reported beside it) takes "pink" for a yes."""
    source = synthetic_source("test", 2)
    report = evaluate(EchoRuntime("pink"), [source], None, True, tmp_path, "stub", {"num_beams": 1})
    scores = report["sources"]["synthetic-test"]
    summary, per_task = scores["summary"], scores["per_task"]
    assert summary["spatial_yesno_acc"] == 0.0
    assert summary["spatial_yesno_no_verdict_rate"] == 1.0
    yes_share = [s.yes_no for s in source.samples if s.task_name == "yesno"]
    assert summary["spatial_yesno_acc_pope"] == pytest.approx(sum(yes_share) / len(yes_share))
    assert summary["counting_acc"] == 0.0 and per_task["count"]["no_count_rate"] == 1.0
    assert "no_verdict_rate" in (tmp_path / "metrics.md").read_text()


def test_rescore_scores_an_earlier_run_again(tmp_path: Path) -> None:
    source = synthetic_source("test", 2)
    first = evaluate(EchoRuntime("yes"), [source], None, True, tmp_path / "run", "stub", {"num_beams": 1})
    # Stale scores in the earlier run's metrics.json are recomputed, not copied.
    stale = json.loads((tmp_path / "run" / "metrics.json").read_text())
    stale["sources"]["synthetic-test"]["summary"]["spatial_yesno_acc"] = 0.123
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(stale))
    assert main(["--rescore", str(tmp_path / "run"), "--split", "test", "--num", "2",
                 "--out", str(tmp_path / "rescored")]) == 0
    assert json.loads((tmp_path / "rescored" / "metrics.json").read_text()) == first
    predictions = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("run", "rescored")]
    assert predictions[0] == predictions[1]
    out = ["--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match="made from other samples"):
        main(["--rescore", str(tmp_path / "run"), "--split", "test", "--num", "1", *out])
    with pytest.raises(SystemExit, match="its predictions are of"):
        main(["--rescore", str(tmp_path / "run"), "--split", "compositional", "--num", "2", *out])
    with pytest.raises(SystemExit, match="needs an earlier lion-eval output"):
        main(["--rescore", str(tmp_path / "nothing"), "--split", "test", "--num", "2", *out])
    with pytest.raises(SystemExit):
        main(["--split", "test", "--num", "2", *out])  # neither --model nor --rescore


def test_first_scene_selects_other_held_out_scenes() -> None:
    reported = synthetic_source("test", 2)
    validation = synthetic_source("test", 2, first_scene=1000)
    assert validation.name == "synthetic-test-from-1000" and reported.name == "synthetic-test"
    assert len(validation.samples) == len(reported.samples)
    assert {s.id.split("/")[2] for s in validation.samples} == {"1000", "1001"}
    assert not {s.id for s in validation.samples} & {s.id for s in reported.samples}
    with pytest.raises(SystemExit, match="--first-scene must be >= 0"):
        synthetic_source("test", 2, first_scene=-1)


def test_the_phrasing_split_asks_the_same_scenes_in_held_out_wordings(tmp_path: Path) -> None:
    templates, heldout = synthetic_source("test", 2), synthetic_source("test", 2, phrasing="heldout")
    assert heldout.name == "synthetic-test-phrasing"
    assert [(s.id, s.answer) for s in heldout.samples] == [(s.id, s.answer) for s in templates.samples]
    assert all(a.question != b.question for a, b in zip(heldout.samples, templates.samples))
    evaluate(EchoRuntime("no"), [templates, heldout], None, True, tmp_path / "run", "stub", {"num_beams": 1})
    assert main(["--rescore", str(tmp_path / "run"), "--split", "test", "--phrasing", "both", "--num", "2",
                 "--out", str(tmp_path / "rescored")]) == 0
    report = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    assert list(report["sources"]) == ["synthetic-test", "synthetic-test-phrasing"]
    scores = [report["sources"][name]["summary"]["spatial_yesno_acc"] for name in report["sources"]]
    assert scores[0] == scores[1]  # same questions' answers, so "no" to all scores the same
    with pytest.raises(SystemExit, match="its predictions are of"):
        main(["--rescore", str(tmp_path / "run"), "--split", "test", "--num", "2", "--out", str(tmp_path / "x")])


def test_cli_on_a_random_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LION_ENGINE_CACHE", str(tmp_path / "engines"))  # the ONNX export below goes here
    pytest.importorskip("lion_ros.runtime.pytorch")
    tokenizers = build_nano_tokenizers(TokenizerTraining(300, 300, corpus_scenes=10), SyntheticConfig())
    config = LionConfig.preset("lion-tiny")
    config = dataclasses.replace(
        config,
        language=dataclasses.replace(config.language, vocab_size=len(tokenizers.t5),
                                     soft_prompt_token_id=tokenizers.tag_token_id),
        qformer=dataclasses.replace(config.qformer, vocab_size=len(tokenizers.qformer), max_position_embeddings=128),
    )
    model_dir = tmp_path / "model"
    LionModel(config).save_pretrained(model_dir)
    tokenizers.save(model_dir)
    out = tmp_path / "eval"
    assert main(["--model", str(model_dir), "--split", "compositional", "--num", "1", "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    summary = report["sources"]["synthetic-compositional"]["summary"]
    assert list(summary) == list(HEADLINE)
    assert (out / "metrics.md").exists()

    # The same questions through the ONNX Runtime backend (exported on first use): same answers.
    pytest.importorskip("onnxruntime")
    out_ort = tmp_path / "eval-ort"
    assert main(["--model", str(model_dir), "--backend", "onnxruntime", "--split", "compositional", "--num", "1",
                 "--out", str(out_ort), "--max-new-tokens", "4"]) == 0
    ort_report = json.loads((out_ort / "metrics.json").read_text())
    assert ort_report["settings"]["backend"] == "onnxruntime"
    answers = [(out / "predictions.jsonl").read_text(), (out_ort / "predictions.jsonl").read_text()]
    assert answers[0] == answers[1]
