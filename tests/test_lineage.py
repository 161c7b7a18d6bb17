"""lion-nano's shipped lineage (configs/train/nano-lineage.yaml): every step resolves to the config its
old per-step file gave, `lion-train --lineage` plans and trains steps, and bad lineages fail clearly."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lion_ros.train import TrainConfig
from lion_ros.train.cli import main, packaged_config
from lion_ros.train.lineage import find_step, load_lineage, plan

REPO = Path(__file__).resolve().parent.parent
LINEAGE = packaged_config("nano-lineage.yaml")


def test_every_lineage_step_resolves_to_what_its_old_config_file_gave() -> None:
    frozen = yaml.safe_load((REPO / "tests" / "data" / "nano_lineage_resolved.yaml").read_text())
    steps = load_lineage(LINEAGE)
    assert [step.name for step in steps] == list(frozen)
    for step in steps:
        assert step.config().to_dict() == TrainConfig.from_dict(frozen[step.name]).to_dict(), step.name


def test_the_plan_runs_the_first_pass_stages_1_and_2_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    groups = plan(load_lineage(LINEAGE))
    assert ["stage1", "stage2"] in groups and groups.index(["stage1", "stage2"]) + 1 == groups.index(["stage3"])
    assert all(len(group) == 1 for group in groups if group != ["stage1", "stage2"])
    assert main(["--lineage", "nano-lineage.yaml", "--plan"]) == 0
    assert capsys.readouterr().out.splitlines() == [" ".join(group) for group in groups]


def test_lion_train_resolves_a_lineage_step_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lineage", str(LINEAGE), "--step", "stage0-reasoned-restart6", "run.seed=11", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = find_step(load_lineage(LINEAGE), "stage0-reasoned-restart6").config(["run.seed=11"])
    assert printed == yaml.safe_load(yaml.safe_dump(expected.to_dict()))
    assert printed["run"]["seed"] == 11 and printed["init"]["skip_groups"] == ["adapters", "router"]


@pytest.mark.parametrize("argv, message", [
    (["--config", "nano-stage1.yaml", "--step", "stage1"], "--step and --plan read a --lineage"),
    (["--lineage", "nano-lineage.yaml"], "either --step NAME or --plan"),
    (["--lineage", "nano-lineage.yaml", "--plan", "--step", "stage1"], "either --step NAME or --plan"),
    (["--lineage", "nano-lineage.yaml", "--plan", "run.seed=1"], "takes no overrides"),
])
def test_lion_train_refuses_lineage_arguments_that_do_not_fit(argv: list[str], message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def write_lineage(tmp_path: Path, steps: str) -> Path:
    (tmp_path / "base.yaml").write_text("stage: stage0\nmodel: {preset: lion-nano}\n")
    path = tmp_path / "lineage.yaml"
    path.write_text(steps)
    return path


def test_a_step_extends_a_file_or_an_earlier_step_and_merges_its_sections(tmp_path: Path) -> None:
    path = write_lineage(tmp_path, """steps:
  - {name: a, extends: base.yaml, set: {data: {synthetic: {tasks: {rec: 6}}}, run: {seed: 1}}}
  - {name: b, extends: a, set: {data: {synthetic: {tasks: {count: 2}}}}}
  - {name: c, extends: base.yaml, parallel: true}
""")
    steps = load_lineage(path)
    assert plan(steps) == [["a"], ["b", "c"]]
    b = find_step(steps, "b").config()
    assert (b.data.synthetic.tasks.rec, b.data.synthetic.tasks.count, b.run.seed) == (6, 2, 1)
    assert find_step(steps, "c").config().run.seed == 0
    assert find_step(steps, "b").config(["run.seed=4"]).run.seed == 4
    assert find_step(steps, "b").config().run.seed == 1  # overrides do not leak into the step
    with pytest.raises(ValueError, match="no step 'd' in the lineage \\(it has a, b, c\\)"):
        find_step(steps, "d")


@pytest.mark.parametrize("steps, message", [
    ("steps: []\n", "non-empty list of steps"),
    ("steps:\n  - {name: a, extends: base.yaml, seed: 1}\n", r"step 1: unknown keys \['seed'\]"),
    ("steps:\n  - {name: a, extends: b}\n  - {name: b, extends: base.yaml}\n",
     "extends 'b', which is neither an earlier step \\(none yet\\) nor a file"),
    ("steps:\n  - {name: a, extends: base.yaml}\n  - {name: a, extends: base.yaml}\n", "step 'a' is named twice"),
    ("steps:\n  - {name: a, extends: base.yaml, parallel: true}\n", "the first step runs alone"),
    ("steps:\n  - {name: a, extends: base.yaml, set: {optim: {lr: fast}}}\n",
     "step 1 \\(a\\): OptimSection.lr must be a number"),
    ("steps:\n  - {name: a, extends: base.yaml, set: [run]}\n", "set must be a mapping of sections"),
])
def test_a_bad_lineage_fails_at_the_step_that_is_wrong(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_lineage(write_lineage(tmp_path, steps))


def test_train_nano_help_prints_its_header() -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "train_nano.sh"), "--help"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("Train lion-nano") and "--from-stage0" in result.stdout
    assert "set -euo" not in result.stdout
