#!/usr/bin/env python3
"""Latency of answering on CPU (or CUDA): per stage, per backend, and what feature reuse saves.

Prints medians over --repeats runs and ratios measured in the same run (the machines are shared
and noisy: compare ratios, not absolute numbers across runs). Thread count is set explicitly.

    python bench/bench_runtime.py                      # the shipped lion-nano, 2 threads
    python bench/bench_runtime.py --model DIR --backends pytorch onnxruntime --repeats 9
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from timing import median_ms  # bench/timing.py

from lion_ros.api import TaskKind
from lion_ros.data.synthetic import render_scene
from lion_ros.runtime.backends import BACKEND_CLASSES, load_runtime
from lion_ros.runtime.base import GenerationSettings
from lion_ros.serving.parameters import SHIPPED_MODEL

QUESTIONS = [
    ("In the image <image>, can you locate the red cup and let me know its coordinates?", TaskKind.REGION),
    ("Is the cup left of the bowl?", TaskKind.IMAGE),
    ("How many objects are on the table?", TaskKind.IMAGE),
]


def bench(runtime, rgb, settings: GenerationSettings, repeats: int) -> dict[str, float]:
    runtime.answer(runtime.encode_image(rgb), QUESTIONS[0][0], task=QUESTIONS[0][1], settings=settings)  # warm-up
    encode_ms, encoded = median_ms(lambda: runtime.encode_image(rgb), repeats)
    row = {"encode_ms": encode_ms}
    answers, fresh = [], []
    for question, task in QUESTIONS:
        ms, answer = median_ms(
            lambda q=question, t=task: runtime.answer(encoded, q, task=t, settings=settings), repeats)
        answers.append((ms, answer))
        fresh_ms, _ = median_ms(
            lambda q=question, t=task: runtime.answer(runtime.encode_image(rgb), q, task=t, settings=settings),
            repeats)
        fresh.append(fresh_ms)
    row["answer_ms"] = statistics.mean(ms for ms, _ in answers)
    row["answer_fresh_ms"] = statistics.mean(fresh)
    row["prefill_ms"] = statistics.mean(a.timings.prefill_ms for _, a in answers)
    row["decode_ms"] = statistics.mean(a.timings.decode_ms for _, a in answers)
    tokens = sum(a.timings.tokens_generated for _, a in answers)
    row["tokens_per_s"] = tokens / sum(a.timings.decode_ms for _, a in answers) * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="model directory (default: lion-nano)")
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnxruntime"], choices=list(BACKEND_CLASSES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    if not args.model.is_dir():
        raise SystemExit(f"no model at {args.model}: pass --model DIR")

    torch.set_num_threads(args.threads)
    rgb = render_scene(0, split="test").rgb
    settings = GenerationSettings(num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    print(f"model {args.model} | device {args.device} | threads {args.threads} | beams {args.beams} | "
          f"max_new_tokens {args.max_new_tokens} | image {rgb.shape[1]}x{rgb.shape[0]} | median of {args.repeats}")
    # precision None: each backend's default (the model's dtype policy; fp32 ONNX for a model directory).
    rows = {b: bench(load_runtime(b, str(args.model), args.device, precision=None, threads=args.threads), rgb,
                     settings, args.repeats)
            for b in args.backends}
    keys = ["encode_ms", "prefill_ms", "decode_ms", "answer_ms", "answer_fresh_ms", "tokens_per_s"]
    print("| backend | " + " | ".join(keys) + " | reuse speed-up |")
    print("|---" * (len(keys) + 2) + "|")
    for backend, row in rows.items():
        cells = " | ".join(f"{row[k]:.1f}" for k in keys)
        print(f"| {backend} | {cells} | {row['answer_fresh_ms'] / row['answer_ms']:.2f}x |")
    if len(rows) > 1:
        base = rows[args.backends[0]]
        for backend in args.backends[1:]:
            ratio = rows[backend]["answer_fresh_ms"] / base["answer_fresh_ms"]
            print(f"{backend} / {args.backends[0]} time per fresh-frame answer: {ratio:.2f}")


if __name__ == "__main__":
    main()
