#!/usr/bin/env python3
"""Time one training step of a stage (forward, backward, optimizer; batches rendered beforehand)
three ways, interleaved in one run so the ratios survive a noisy machine: running stage 0's idle
adapters (the baseline), skipping them as training does, and skipping them with `run.compile`.

    python bench/bench_train_step.py [--config lion_ros/configs/train/nano-stage0.yaml]
                                     [--steps 8] [--repeats 5] [--threads 2] [KEY=VALUE ...]

Stage 0 keeps its adapters frozen at zero, where they add exactly 0 to T5: skipping them gives
the same losses bit for bit, and the compiled stacks the same to float rounding (tests/test_train.py).
The compiled model is compiled before timing (one to two minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from lion_ros.model.adapters import MixtureOfAdapters
from lion_ros.model.lion import LionModel
from lion_ros.train import distributed as dist_utils
from lion_ros.train.config import TrainConfig
from lion_ros.train.data import STAGE_TASKS, Collator, SyntheticBatches, TrainBatch, patch_targets
from lion_ros.train.stages import apply_freeze_policy, build_model, set_train_mode, skip_idle_adapters
from lion_ros.train.tokenizer_training import prepare_tokenizers
from lion_ros.train.trainer import build_training_module, compile_stacks, param_groups, total_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="lion_ros/configs/train/nano-stage0.yaml")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each variant, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.images_per_batch=16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig.load(args.config, ["model.tokenizer_dir=lion_ros/assets/lion-nano", *args.overrides])
    torch.manual_seed(config.run.seed)

    env = dist_utils.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mode="none")
    tokenizers = prepare_tokenizers(config.model, config.data.synthetic, env)
    lion = build_model(config, tokenizers)
    apply_freeze_policy(lion, config.stage)
    if not skip_idle_adapters(lion):
        raise SystemExit(f"stage {config.stage} has no idle adapters to skip: nothing to compare")
    compiled = copy.deepcopy(lion)
    compile_stacks(compiled)
    variants = {"adapters run": (lion, False), "adapters skipped": (lion, True),
                "skipped + compiled": (compiled, True)}
    steppers = {model: _stepper(model, config) for model in (lion, compiled)}
    dataset = SyntheticBatches(config.data, Collator.for_model(tokenizers, config.data, lion.config),
                               STAGE_TASKS[config.stage], config.run.seed, patch_grid=lion.config.vision.patch_grid,
                               patch_targets=patch_targets(config.data))
    batches = [dataset[k] for k in range(args.steps)]
    questions = sum(batch.num_questions for batch in batches)

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # the first round warms up (and compiles)
        for name, (model, skip) in variants.items():
            for mixture in (m for m in model.modules() if isinstance(m, MixtureOfAdapters)):
                mixture.enabled = not skip
            start = time.perf_counter()
            for batch in batches:
                steppers[model](batch)
            if repeat:
                seconds[name].append(time.perf_counter() - start)
    print(f"{config.stage}, {len(batches)} steps x {questions / len(batches):.0f} questions, "
          f"{args.threads} threads, median of {args.repeats}")
    baseline = statistics.median(seconds["adapters run"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:20s} {1e3 * median / len(batches):7.1f} ms/step  {questions / median:5.1f} questions/s"
              f"  {baseline / median:.2f}x")


def _stepper(lion: LionModel, config: TrainConfig) -> Callable[[TrainBatch], None]:
    """One optimizer step of `lion` on a batch, as the trainer takes it."""
    module = build_training_module(lion, config)
    optimizer = torch.optim.AdamW(param_groups(module, config.optim.weight_decay), lr=config.optim.lr)
    set_train_mode(module, lion, config.stage)

    def step(batch: TrainBatch) -> None:
        with lion.route(batch.task_index):
            loss = total_loss(*module(batch), batch.labels != -100, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()

    return step


if __name__ == "__main__":
    main()
