"""How much a model's answers depend on the image: teacher-forced answer loss with each question
paired with its own image versus with another image of the batch.

    python scripts/image_reliance.py --model DIR [--batches 3] [--config lion_ros/configs/train/nano-stage0.yaml]

A model that reads the image has a clearly higher loss with the wrong image; equal losses mean
its answers come from the question alone (the failure mode of an under-trained from-scratch
model: a good language prior, no grounding). Batches are synthetic training batches built as
the config's stage builds them (task mix, questions per image), from a seed the trainer never uses.
"""
from __future__ import annotations

import argparse

import torch

from lion_ros.model.lion import LionModel
from lion_ros.preprocess import PreprocessConfig
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.config import TrainConfig
from lion_ros.train.data import STAGE_TASKS, Collator, SyntheticBatches
from lion_ros.train.trainer import TrainingModule, answer_loss

HELD_OUT_SEED = 123_457  # not a seed of any training config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LION model directory")
    parser.add_argument("--config", default="lion_ros/configs/train/nano-stage0.yaml",
                        help="training config whose data section builds the batches")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lion = LionModel.from_pretrained(args.model).eval()
    tokenizers = LionTokenizers.load(args.model)
    config = TrainConfig.load(args.config)
    collator = Collator(tokenizers, config.data, PreprocessConfig(image_size=lion.config.vision.image_size),
                        qformer_max_tokens=lion.config.qformer.max_position_embeddings)
    batches = SyntheticBatches(config.data, collator, STAGE_TASKS[config.stage], seed=HELD_OUT_SEED)
    module = TrainingModule(lion, config.data.length_groups)
    # Token-averaged, long answers (boxes, captions) dominate; question-averaged, every question
    # counts once, so the one-word answers of yes/no, counting and attributes show.
    print("batch  average   own image  other image  difference")
    with torch.no_grad():
        for k in range(args.batches):
            batch = batches[k]
            mask = batch.labels != -100
            own = module(batch)[0]
            batch.image_index = (batch.image_index + 1) % batch.pixel_values.shape[0]  # next image's features
            other = module(batch)[0]
            for average in ("token", "question"):
                own_loss, other_loss = answer_loss(own, mask, average), answer_loss(other, mask, average)
                print(f"{k:5d}  {average:8s}  {own_loss:9.4f}  {other_loss:11.4f}  {other_loss - own_loss:+10.4f}")

if __name__ == "__main__":
    main()
