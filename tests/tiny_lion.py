"""Tiny random LION models with real (tiny) tokenizers, for runtime, converter and CLI tests.

The model is lion-tiny with its vocabulary sizes and soft-prompt id taken from tokenizers
trained on a few hundred sentences, saved in the real directory format.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.model import LionConfig, LionModel
from lion_ros.prompts import TAG_TEMPLATE, caption_prompt, rec_prompt
from lion_ros.tokenization import LionTokenizers, train_nano_tokenizers

OBJECTS = ["red cup", "blue bowl", "green plate", "yellow banana", "white mug", "black phone"]


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        obj = rng.choice(OBJECTS)
        box = sorted(rng.random() for _ in range(2)) + sorted(rng.random() for _ in range(2))
        texts.append(TAG_TEMPLATE.format(", ".join(rng.sample(OBJECTS, 2))) + rec_prompt(f"the {obj}", i))
        texts.append(f"where is the {obj}? " + DEFAULT_CODEC.format_answer([(box[0], box[2], box[1], box[3])]))
        texts.append(caption_prompt(i) + f" a {obj} next to a {rng.choice(OBJECTS)} on the table.")
    return texts


def tiny_tokenizers() -> LionTokenizers:
    return train_nano_tokenizers(corpus(), t5_vocab_size=260, qformer_vocab_size=160)


def tiny_config(tokenizers: LionTokenizers) -> LionConfig:
    config = LionConfig.preset("lion-tiny")
    language = dataclasses.replace(
        config.language, vocab_size=len(tokenizers.t5), soft_prompt_token_id=tokenizers.tag_token_id
    )
    qformer = dataclasses.replace(config.qformer, vocab_size=len(tokenizers.qformer))
    return dataclasses.replace(config, language=language, qformer=qformer)


def tiny_model(tokenizers: LionTokenizers, seed: int = 0, config: LionConfig | None = None) -> LionModel:
    """A random model of `config` (default: `tiny_config`), its zero-initialised maps made to matter."""
    torch.manual_seed(seed)
    model = LionModel(config or tiny_config(tokenizers)).eval()
    with torch.no_grad():  # adapters and aggregator start as zero maps; make them matter
        for name, param in model.named_parameters():
            if ".adapter." in name or "aggregator." in name:
                param.normal_(0.0, 0.2)
    return model


def save_model_dir(directory: Path, model: LionModel, tokenizers: LionTokenizers) -> Path:
    model.save_pretrained(directory)
    tokenizers.save(directory)
    return directory


def rgb_image(height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
