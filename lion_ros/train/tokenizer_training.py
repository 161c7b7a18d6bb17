"""Tokenizers for a training run: load them, or train nano ones on the synthetic corpus."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from lion_ros.data.synthetic import SyntheticConfig, SyntheticDataset
from lion_ros.prompts import build_t5_prompt
from lion_ros.tokenization import T5_DIR, LionTokenizers, train_nano_tokenizers

from .config import ModelSection, TokenizerTraining
from .distributed import DistEnv, barrier

log = logging.getLogger(__name__)


def synthetic_corpus(config: SyntheticConfig, num_scenes: int) -> Iterator[str]:
    """Every text the model reads or writes on the synthetic train split: T5 prompts with and
    without tags (the Q-Former's raw questions are inside them) and answers."""
    dataset = SyntheticDataset("train", num_scenes, config, cache_size=1)
    for sample in tqdm(dataset, total=len(dataset), desc="tokenizer corpus", unit="sample"):
        yield build_t5_prompt(sample.question, sample.tags)
        yield build_t5_prompt(sample.question, None)
        yield sample.answer


def build_nano_tokenizers(settings: TokenizerTraining, config: SyntheticConfig) -> LionTokenizers:
    return train_nano_tokenizers(
        synthetic_corpus(config, settings.corpus_scenes), settings.t5_vocab_size, settings.qformer_vocab_size
    )


def prepare_tokenizers(model: ModelSection, synthetic: SyntheticConfig, env: DistEnv) -> LionTokenizers:
    """Load `model.tokenizer_dir`; train and save it first (on rank 0) when it is missing and
    `model.train_tokenizer` says how."""
    if not model.tokenizer_dir:
        raise ValueError("model.tokenizer_dir is required when training from scratch (init.kind scratch)")
    directory = Path(model.tokenizer_dir)
    if not (directory / T5_DIR).exists():
        if model.train_tokenizer is None:
            raise FileNotFoundError(f"no tokenizers in {directory} (model.tokenizer_dir, or the starting model's "
                                    "folder when that is empty) and model.train_tokenizer is not set")
        if env.is_main:
            log.info("training tokenizers into %s", directory)
            build_nano_tokenizers(model.train_tokenizer, synthetic).save(directory)
        barrier(env)
    return LionTokenizers.load(directory)
