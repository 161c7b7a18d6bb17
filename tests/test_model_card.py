"""The shipped lion-nano's card states what lion-eval measures: every figure of the card's
evaluation table is the shipped evaluation files' figure, and lion-eval on the shipped weights
reproduces those files' predictions (checked on the first scenes; the full run takes minutes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NANO = Path(__file__).resolve().parents[1] / "lion_ros" / "assets" / "lion-nano"
SPLITS = ("test", "compositional")
BAR = {"rec_acc@0.5": 0.90, "spatial_yesno_acc": 0.95, "counting_acc": 0.90, "attribute_acc": 0.95}
# The card's evaluation table: row label -> lion-eval summary metric.
CARD_ROWS = {
    "REC acc@IoU 0.5": "rec_acc@0.5",
    "spatial yes/no (strict)": "spatial_yesno_acc",
    "counting": "counting_acc",
    "attributes": "attribute_acc",
    "caption CIDEr": "caption_cider",
    "REG exact match": "reg_acc",
    "find-all F1@0.5": "find_all_f1@0.5",
    "grounded caption CIDEr": "grounded_caption_cider",
}

pytestmark = pytest.mark.skipif(not (NANO / "config.json").is_file(), reason=f"lion-nano not present at {NANO}")


def shipped_summary(split: str) -> dict[str, float]:
    report = json.loads((NANO / "eval" / split / "metrics.json").read_text())
    return report["sources"][f"synthetic-{split}"]["summary"]


def card_table() -> dict[str, list[str]]:
    """The card's evaluation table: first cell -> the other cells."""
    rows = {}
    for line in (NANO / "MODEL_CARD.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in CARD_ROWS:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("column, split", list(enumerate(SPLITS)))
def test_card_table_quotes_the_shipped_evaluation(column: int, split: str) -> None:
    rows = card_table()
    assert set(rows) == set(CARD_ROWS), f"the card's evaluation table lacks rows {sorted(set(CARD_ROWS) - set(rows))}"
    summary = shipped_summary(split)
    for label, metric in CARD_ROWS.items():
        assert rows[label][column] == f"{summary[metric]:.3f}", (
            f"card: {label} on {split} = {rows[label][column]}, eval/{split}/metrics.json: {summary[metric]:.3f}"
        )


def test_card_says_whether_the_bar_is_met() -> None:
    card = (NANO / "MODEL_CARD.md").read_text()
    met = all(shipped_summary("test")[m] >= bar for m, bar in BAR.items())
    assert ("below the quality bar" in card) != met
    assert ("meets the bar on all four" in card) == met


@pytest.mark.slow
def test_lion_eval_reproduces_the_shipped_predictions(tmp_path: Path) -> None:
    from lion_ros.eval.cli import main

    shipped = {}
    for line in (NANO / "eval" / "test" / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        shipped[row["id"]] = row["prediction"]
    # The card's command (lion-eval --model lion_ros/assets/lion-nano --split test --num 200
    # --threads 1), on its first two scenes.
    assert main(["--model", str(NANO), "--split", "test", "--num", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 28
    assert {r["id"]: r["prediction"] for r in rows} == {r["id"]: shipped[r["id"]] for r in rows}


def test_the_shipped_stage0_overlay_completes_the_start_of_stages_1_and_2() -> None:
    """scripts/train_nano.sh --from-stage0 starts stages 1 and 2 from the shipped model with
    stage0.safetensors over it: the overlay must hold every group stages 1-3 changed, at values
    other than the shipped ones, and leave only the adapters (started fresh) unloaded."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from lion_ros.model import LionConfig, LionModel, parameter_group
    from lion_ros.train.stages import STAGE0_OVERLAY_GROUPS, load_matching

    overlay = load_file(NANO / "stage0.safetensors")
    shipped = load_file(NANO / "model.safetensors")
    changed = {parameter_group(name) for name, tensor in overlay.items() if not torch.equal(tensor, shipped[name])}
    assert changed == STAGE0_OVERLAY_GROUPS
    model = LionModel(dataclasses.replace(LionConfig.load(NANO / "config.json"), visual_input="qformer"))
    _, fresh = load_matching(model, NANO, skip_groups=["adapters", "router"], overlay=NANO / "stage0.safetensors")
    assert {parameter_group(name) for name in fresh} == {"adapters"}  # a stage-1 model has no gates
    # The size bar holds for what ships, overlay included.
    assert (NANO / "model.safetensors").stat().st_size + (NANO / "stage0.safetensors").stat().st_size < 25e6
