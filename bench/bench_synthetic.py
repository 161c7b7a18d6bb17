#!/usr/bin/env python3
"""How fast the synthetic scene generator renders, next to the preprocessing every training image
pays anyway (a baseline measured in the same run, so the ratio survives a noisy machine).

    python bench/bench_synthetic.py [--scenes 30] [--repeats 5] [--threads 1]

Rendering must stay a small fraction of a training step (~1.3 s for 16 images on 2 cores), so
data loading never starves the trainer; ~6-8 ms per 640x480 scene on one idle core.
"""
from __future__ import annotations

import argparse

import torch
from timing import median_ms  # bench/timing.py

from lion_ros.data.synthetic import render_scene
from lion_ros.preprocess import PreprocessConfig, preprocess_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=30, help="scenes per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=160, help="ViT input size for the baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    seeds = list(range(args.scenes))
    render_scene(0)  # warm the geometry cache
    images = {seed: render_scene(seed).rgb for seed in seeds}
    config = PreprocessConfig(image_size=args.image_size)
    render = median_ms(lambda: [render_scene(seed) for seed in seeds], args.repeats)[0] / len(seeds)
    preprocess = median_ms(lambda: [preprocess_image(images[seed], config) for seed in seeds],
                           args.repeats)[0] / len(seeds)
    print(f"render 640x480 scene: {render:.2f} ms (median of {args.repeats} x {args.scenes} scenes)")
    print(f"preprocess to {args.image_size} px:  {preprocess:.2f} ms")
    print(f"ratio render / preprocess: {render / preprocess:.1f}")


if __name__ == "__main__":
    main()
