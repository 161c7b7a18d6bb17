"""lion-ask as a user runs it: a subprocess on a tiny random model directory."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from tiny_lion import rgb_image

from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.cli import ask


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), rgb_image(60, 100)[:, :, ::-1])
    return path


def _ask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lion_ros.cli.ask", *args], capture_output=True, text=True, timeout=120
    )


def test_region_question_gets_a_box_and_an_annotated_image(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.png"
    result = _ask("--model", str(model_dir), "--image", str(image_file), "--beams", "2", "--max-new-tokens", "40",
                  "--tags", "cup,table", "--save-annotated", str(out), "--json", "where is the red cup?")  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["task"] == "region"
    assert DEFAULT_CODEC.parse_normalized(answer["text"]), answer["text"]
    (box,) = answer["boxes"]
    assert box["phrase"] == "red cup" and 0 < box["score"] <= 1
    assert 0 <= box["x1"] < box["x2"] <= 100 and 0 <= box["y1"] < box["y2"] <= 60
    assert set(answer["timings"]) >= {"image_encode_ms", "prefill_ms", "decode_ms", "total_ms", "tokens_generated"}
    annotated = cv2.imread(str(out))
    assert annotated.shape == (60, 100, 3)


def test_text_output_and_errors(model_dir: Path, image_file: Path, tmp_path: Path, capsys) -> None:
    # In-process: the subprocess path is covered above, and each interpreter start costs seconds.
    args = ["--model", str(model_dir), "--image", str(image_file)]
    assert ask.main([*args, "--task", "image", "--beams", "1", "--max-new-tokens", "5", "What is on the table?"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("answer: ") and lines[1] == "task: image" and lines[-1].startswith("timings: ")

    assert ask.main(["--model", str(tmp_path / "none"), "--image", str(image_file), "where?"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert ask.main(["--model", str(model_dir), "--image", str(tmp_path / "none.png"), "where?"]) == 1
    assert "cannot read an image" in capsys.readouterr().err
    assert ask.main([*args, " "]) == 1
    assert "empty" in capsys.readouterr().err
    for bad in (["--beams", "0", "where?"], ["--help"]):
        with pytest.raises(SystemExit) as exit_:
            ask.main([*args, *bad])
        assert exit_.value.code == (2 if bad[0] == "--beams" else 0)
    assert "--save-annotated" in capsys.readouterr().out


def test_repetition_penalty_is_the_models_own_unless_given(model_dir: Path, image_file: Path, tmp_path: Path,
                                                           capsys) -> None:
    from lion_ros.api import GENERATION_CONFIG_NAME

    mine = Path(shutil.copytree(model_dir, tmp_path / "model"))

    def penalty(*extra: str) -> float:
        args = ask.build_parser().parse_args(["--model", str(mine), "--image", str(image_file), *extra, "where?"])
        return ask.generation_settings(args).repetition_penalty

    assert penalty() == 1.5  # no generation_config.json: the reference LION value
    (mine / GENERATION_CONFIG_NAME).write_text('{"repetition_penalty": 1.0}')
    assert penalty() == 1.0  # what lion-train writes into every model it saves
    assert penalty("--repetition-penalty", "1.2") == 1.2
    assert ask.main(["--model", str(mine), "--image", str(image_file), "--repetition-penalty", "1.2", "--beams", "1",
                     "--max-new-tokens", "3", "What is on the table?"]) == 0
    assert capsys.readouterr().out.startswith("answer: ")
    for bad in ("0", "-1", "nan", "high"):
        with pytest.raises(SystemExit) as exit_:
            penalty("--repetition-penalty", bad)
        assert exit_.value.code == 2
    (mine / GENERATION_CONFIG_NAME).write_text('{"repetition_penalty": "strong"}')
    assert ask.main(["--model", str(mine), "--image", str(image_file), "where?"]) == 1
    assert "repetition_penalty must be a positive number" in capsys.readouterr().err
