"""The model directories a training run writes (final, partial, best, checkpoints): each holds
the weights, the tokenizers, the decoding settings the model is meant to be used with
(generation_config.json) and the run's config, so lion-ask, lion-eval and the node load any of
them as they are and decode it as its starting model was decoded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from lion_ros.api import GENERATION_CONFIG_NAME, GenerationSettings, model_generation_defaults
from lion_ros.model.lion import LionModel
from lion_ros.tokenization import LionTokenizers

from .config import TrainConfig

CONFIG_FILE = "train_config.yaml"

# A from-scratch model answers boxes with this project's box format, whose repeated digits the
# reference penalty (1.5) penalises: it cost lion-nano 0.11 REC accuracy (docs/experiments/lion-nano.md).
SCRATCH_GENERATION = {"repetition_penalty": 1.0}


def generation_config(config: TrainConfig) -> dict[str, float]:
    """The decoding defaults of the run's models: the starting model's generation_config.json
    (init.path, or init.image_stage for a hand-over); the reference's, which the runtime used
    for it, when it has none; `SCRATCH_GENERATION` for a model trained from scratch."""
    start = {"pretrained": config.init.path, "handover": config.init.image_stage}.get(config.init.kind)
    if start is None:
        return dict(SCRATCH_GENERATION)
    return model_generation_defaults(start) or {"repetition_penalty": GenerationSettings.repetition_penalty}


def save_model_dir(directory: Path, lion: LionModel, tokenizers: LionTokenizers, config: TrainConfig) -> None:
    """Write a model directory: config.json and weights, tokenizers, generation_config.json and
    train_config.yaml."""
    lion.save_pretrained(directory)
    tokenizers.save(directory)
    (directory / GENERATION_CONFIG_NAME).write_text(json.dumps(generation_config(config)) + "\n")
    config.save(directory / CONFIG_FILE)


def replace_model_dir(directory: Path, lion: LionModel, tokenizers: LionTokenizers, config: TrainConfig) -> None:
    """`save_model_dir` into a sibling folder, then swap it in: a crash mid-save leaves the
    previous directory whole rather than half overwritten."""
    staging = directory.with_name(directory.name + ".saving")
    if staging.exists():
        shutil.rmtree(staging)
    save_model_dir(staging, lion, tokenizers, config)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
