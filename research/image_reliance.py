"""How much a model's answers depend on the image: teacher-forced answer loss with each question
paired with its own image versus with another image of the batch.

    python research/image_reliance.py --model DIR [--batches 3] [--config lion_ros/configs/train/nano-stage0.yaml]
        [--swap both|qformer_input|aggregator_tokens]

A model that reads the image has a clearly higher loss with the wrong image; equal losses mean
its answers come from the question alone (the failure mode of an under-trained from-scratch
model: a good language prior, no grounding). Batches are synthetic training batches built as
the config's stage builds them (task mix, questions per image), from a seed the trainer never uses.
--swap gives only one visual branch the other image (the Q-Former's ViT input or the aggregator's
tokens), which shows which of the two branches T5 actually reads.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from lion_ros.model.lion import ImageFeatures, LionModel
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.config import TrainConfig
from lion_ros.train.data import STAGE_TASKS, Collator, SyntheticBatches, TrainBatch
from lion_ros.train.trainer import TrainingModule, answer_loss

HELD_OUT_SEED = 123_457  # not a seed of any training config


def next_image(features: ImageFeatures, swap: str) -> ImageFeatures:
    """`features` with the `swap` branch (a field of ImageFeatures, or both) taken from the next
    image of the batch."""
    branches = [field.name for field in dataclasses.fields(features)] if swap == "both" else [swap]
    return dataclasses.replace(features, **{name: getattr(features, name).roll(-1, 0) for name in branches
                                            if getattr(features, name) is not None})


def own_and_other_image_loss(module: TrainingModule, batch: TrainBatch, swap: str) -> dict[str, tuple[float, float]]:
    """Per answer average ("token", "question"): the batch's teacher-forced answer loss with each
    question's own image, and with the `swap` features of the next image of the batch."""
    lion = module.lion
    mask = batch.labels != -100
    own = module(batch)[0]
    encode_image = lion.encode_image
    lion.encode_image = lambda pixels: next_image(encode_image(pixels), swap)  # shadows the method
    try:
        other = module(batch)[0]
    finally:
        del lion.encode_image
    return {average: (float(answer_loss(own, mask, average)), float(answer_loss(other, mask, average)))
            for average in ("token", "question")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LION model directory")
    parser.add_argument("--config", default="lion_ros/configs/train/nano-stage0.yaml",
                        help="training config whose data section builds the batches")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--swap", default="both", choices=("both", "qformer_input", "aggregator_tokens"),
                        help="what the other image replaces: both branches' features, or one branch's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lion = LionModel.from_pretrained(args.model).eval()
    tokenizers = LionTokenizers.load(args.model)
    config = TrainConfig.load(args.config)
    collator = Collator.for_model(tokenizers, config.data, lion.config)
    batches = SyntheticBatches(config.data, collator, STAGE_TASKS[config.stage], seed=HELD_OUT_SEED)
    module = TrainingModule(lion, config.data.length_groups)
    # Token-averaged, long answers (boxes, captions) dominate; question-averaged, every question
    # counts once, so the one-word answers of yes/no, counting and attributes show.
    print("batch  average   own image  other image  difference")
    with torch.no_grad():
        for k in range(args.batches):
            for average, (own, other) in own_and_other_image_loss(module, batches[k], args.swap).items():
                print(f"{k:5d}  {average:8s}  {own:9.4f}  {other:11.4f}  {other - own:+10.4f}")


if __name__ == "__main__":
    main()
