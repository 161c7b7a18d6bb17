"""Validation during training: `data.val_files` answered by the model being trained and scored
by lion-eval's own code (`lion_ros.eval.cli.evaluate`), so a validation score is the number
`lion-eval` reports for that model on those files with the same decoding settings.

Each validation writes lion-eval's report to `<output_dir>/val/step-N/`; with `run.best_metric`
the model that scored best so far is kept in `<output_dir>/best/`, whose `best.json` names the
step, the metric and its value.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lion_ros.data.sources import load_source
from lion_ros.eval.cli import HEADLINE, EvalSource, evaluate
from lion_ros.model.lion import LionModel
from lion_ros.runtime.base import GenerationSettings
from lion_ros.runtime.pytorch import PyTorchRuntime
from lion_ros.tokenization import LionTokenizers

from .config import TrainConfig
from .data import check_images_exist
from .saving import generation_config, replace_model_dir

log = logging.getLogger(__name__)

VAL_DIR = "val"
BEST_DIR = "best"
BEST_RECORD = "best.json"
# lion-eval's --max-new-tokens default: long enough for a grounded caption of six objects.
MAX_NEW_TOKENS = 200
# Headline metrics where a smaller value is the better model; every other one is a score.
LOWER_IS_BETTER = frozenset({"spatial_yesno_no_verdict_rate"})


class Validation:
    """Scores the training model on `data.val_files` (rank 0 only) and keeps the best one."""

    def __init__(self, config: TrainConfig, out_dir: Path, resumed: bool) -> None:
        """resumed: the run continues a checkpoint, so an existing best/ is this run's and stays
        the one to beat; a fresh run replaces it at its first validation."""
        samples = [sample for source in config.data.val_files for sample in load_source(source)]
        if not samples:
            raise ValueError("data.val_files hold no questions")
        check_images_exist(sorted({s.image_path for s in samples if s.image_path}), "data.val_files")
        self.metric = config.run.best_metric
        if self.metric and not any(s.task_name == HEADLINE[self.metric][0] for s in samples):
            raise ValueError(f"run.best_metric {self.metric} scores {HEADLINE[self.metric][0]} questions, which "
                             "data.val_files do not ask; choose another metric")
        self.config = config
        self.out_dir = out_dir
        self.source = EvalSource("val", samples)
        self.settings = GenerationSettings(num_beams=1, max_new_tokens=MAX_NEW_TOKENS, **generation_config(config))
        record = out_dir / BEST_DIR / BEST_RECORD
        kept = json.loads(record.read_text()) if resumed and record.is_file() else None
        self.best: dict | None = kept if kept is not None and kept.get("metric") == self.metric else None

    def due(self, step: int, last: bool) -> bool:
        """Whether step `step` is validated: every run.val_every steps, and the run's last step."""
        every = self.config.run.val_every
        return last or (every > 0 and step % every == 0)

    def run(self, step: int, lion: LionModel, tokenizers: LionTokenizers) -> dict[str, float | None]:
        """Score the model as it is after `step` steps; save it to best/ if it is the best so far.
        Returns lion-eval's headline metrics (None where the files ask no question of that kind).
        Leaves the model in eval mode: the caller restores its training mode."""
        # Greedy decoding in eval mode draws no random numbers, but the training RNG must stay
        # exactly where an unvalidated run has it (exact resume), whatever the runtime does.
        devices = [lion.soft_prompt_hint.device] if lion.soft_prompt_hint.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            report = evaluate(
                PyTorchRuntime(lion, tokenizers), [self.source], self.settings, True,
                self.out_dir / VAL_DIR / f"step-{step:07d}", f"{self.config.run.output_dir} step {step}",
                {"num_beams": self.settings.num_beams, "max_new_tokens": self.settings.max_new_tokens,
                 "repetition_penalty": self.settings.repetition_penalty, "tags": True},
            )
        summary = report["sources"][self.source.name]["summary"]
        log.info("validation at step %d: %s", step,
                 ", ".join(f"{key} {value:.4f}" for key, value in summary.items() if value is not None))
        if self.metric:
            self.keep_if_best(step, summary, lion, tokenizers)
        return summary

    def keep_if_best(self, step: int, summary: dict[str, float | None], lion: LionModel,
                     tokenizers: LionTokenizers) -> bool:
        """Save `lion` to best/ if `summary` (headline metrics after `step`) beats the best so far
        on run.best_metric; returns whether it did."""
        value = summary[self.metric]
        if self.best is not None:
            previous = self.best["value"]
            if (value >= previous) if self.metric in LOWER_IS_BETTER else (value <= previous):
                return False  # ties keep the earlier model
        best = self.out_dir / BEST_DIR
        replace_model_dir(best, lion, tokenizers, self.config)
        self.best = {"step": step, "metric": self.metric, "value": value}
        (best / BEST_RECORD).write_text(json.dumps(self.best, indent=2) + "\n")
        log.info("best %s so far (%.4f at step %d): saved to %s", self.metric, value, step, best)
        return True
