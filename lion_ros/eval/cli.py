"""`lion-eval`: run a model over held-out data and score it.

    lion-eval --model DIR --split test --num 50 --out runs/eval/test
    lion-eval --model DIR --split test --phrasing both --num 50 --out runs/eval/phrasing
    lion-eval --model ENGINE_DIR --backend onnxruntime --split test --num 50 --out runs/eval/test-ort
    lion-eval --model DIR --split none --vqav2 questions.json annotations.json --image-root val2014 --out ...
    lion-eval --model DIR --split none --coco-instances instances_val.json --image-root images --out ...
    lion-eval --rescore lion_ros/assets/lion-nano/eval/test --split test --num 200 --out runs/eval/rescored

Sources: a synthetic split (`--num` scenes of 14 questions, worded by the canonical prompt of each
task and/or, with `--phrasing heldout|both`, by the phrasing grammar's held-out productions) and
any dataset files given (read through `lion_ros.data.sources`, as lion-train's `data.files`).
Each image is encoded once and asked all its questions through the chosen runtime
(`--backend`, PyTorch by default). Writes `metrics.json` (headline metrics,
every per-task score, settings), `metrics.md` (the same as tables) and `predictions.jsonl`.
`--rescore DIR` scores the predictions of an earlier run (DIR/predictions.jsonl, made from the
same sources) with the current metrics, without a model; the model name, settings and timings
come from DIR/metrics.json.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lion_ros.data.images import load_rgb
from lion_ros.data.sample import Sample
from lion_ros.eval.metrics import score_samples
from lion_ros.runtime.backends import BACKEND_CLASSES

# Headline metric -> (task name, score key). Always present in the output: null when a source
# has no samples of that task. spatial_yesno_acc is strict (the answer must state the right
# verdict) and is the one bars are set on; the POPE-rule figure is for comparison with public
# benchmarks only (lion_ros.eval.metrics.yes_no_metrics).
HEADLINE: OrderedDict[str, tuple[str, str]] = OrderedDict(
    [
        ("rec_acc@0.5", ("rec", "accuracy")),
        ("spatial_yesno_acc", ("yesno", "accuracy")),
        ("spatial_yesno_acc_pope", ("yesno", "accuracy_pope")),
        ("spatial_yesno_no_verdict_rate", ("yesno", "no_verdict_rate")),
        ("counting_acc", ("count", "accuracy")),
        ("attribute_acc", ("attribute", "accuracy")),
        ("vqav2_acc", ("vqa", "accuracy")),
        ("caption_cider", ("caption", "cider")),
        ("reg_acc", ("reg", "accuracy")),
        ("find_all_f1@0.5", ("find_all", "f1")),
        ("grounded_caption_cider", ("grounded_caption", "cider")),
    ]
)


@dataclass(frozen=True)
class EvalSource:
    name: str
    samples: list[Sample]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lion-eval",
        description="Score a LION model directory on the synthetic held-out splits and/or public-format "
        "files: REC acc@IoU0.5, spatial yes/no, counting, attributes, VQAv2 accuracy, CIDEr.",
    )
    parser.add_argument("--model",
                        help="model directory (config.json, model.safetensors, tokenizers), or an engine directory "
                             "(lion-build-engines) for --backend onnxruntime/tensorrt; required unless --rescore")
    parser.add_argument("--rescore", metavar="DIR",
                        help="score DIR/predictions.jsonl, an earlier lion-eval output made from the same sources "
                             "(give the same --split, --num, --first-scene and files), instead of running a model")
    parser.add_argument("--backend", default="pytorch", choices=list(BACKEND_CLASSES),
                        help="runtime that answers (engine backends export a model directory on first use)")
    parser.add_argument("--split", default="test", choices=["test", "compositional", "none"],
                        help="synthetic split to evaluate ('none': only the public files given)")
    parser.add_argument("--phrasing", default="templates", choices=["templates", "heldout", "both"],
                        help="how the synthetic questions are worded: the canonical templates, the phrasing "
                             "grammar's held-out productions (the 'phrasing' split, which no training run sees), or "
                             "both on the same scenes, reported side by side")
    parser.add_argument("--num", type=int, default=100, help="synthetic scenes to evaluate (14 questions each)")
    parser.add_argument("--first-scene", type=int, default=0,
                        help="index of the first synthetic scene; the model card reports scenes from 0, so "
                             "choose between recipes on another range (e.g. 1000), which no training run sees either")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--num-beams", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="long enough for a grounded caption of six objects")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="1.0 for exact box strings (the reference's 1.5 penalises repeated digits)")
    parser.add_argument("--no-tags", action="store_true", help="ask without the scene tags")
    parser.add_argument("--limit", type=int, default=0, help="at most this many samples per public file (0 = all)")
    parser.add_argument("--image-root", default="", help="image folder of the public files")
    parser.add_argument("--vqav2", nargs=2, metavar=("QUESTIONS", "ANNOTATIONS"), help="VQAv2 json pair")
    parser.add_argument("--coco-captions", metavar="FILE", help="COCO captions json (scored by CIDEr)")
    parser.add_argument("--refcoco", nargs=2, metavar=("REFS", "INSTANCES"),
                        help="refer-style refs(..).p + instances.json")
    parser.add_argument("--refcoco-split", default="val", help="split of --refcoco (val, testA, ...)")
    parser.add_argument("--vsr", metavar="FILE", help="VSR jsonl (spatial yes/no)")
    parser.add_argument("--coco-instances", metavar="FILE",
                        help="COCO instances json of your own scenes (REC, find-all, counting from its labels)")
    parser.add_argument("--instructions", metavar="FILE",
                        help="instruction jsonl (see lion_ros.data.readers.read_instructions)")
    args = parser.parse_args(argv)
    if not args.model and not args.rescore:
        parser.error("give --model, or --rescore DIR to score an earlier run's predictions")
    return args


def synthetic_source(split: str, num_scenes: int, first_scene: int = 0, phrasing: str = "templates") -> EvalSource:
    """`phrasing`: "templates" (the canonical template of each task), "heldout" (the phrasing grammar's
    held-out productions, the `phrasing` split: same scenes, objects and answers, other words) or
    "grammar" (its training productions)."""
    from lion_ros.data.synthetic import SyntheticConfig, SyntheticDataset

    if first_scene < 0:
        raise SystemExit(f"--first-scene must be >= 0, got {first_scene}")
    dataset = SyntheticDataset(split, num_scenes, SyntheticConfig(prompt_variety=False, phrasing=phrasing),
                               first_scene=first_scene, cache_size=1)
    name = f"synthetic-{split}" if first_scene == 0 else f"synthetic-{split}-from-{first_scene}"
    return EvalSource(name + {"templates": "", "heldout": "-phrasing", "grammar": "-grammar"}[phrasing], list(dataset))


def public_sources(args: argparse.Namespace) -> list[EvalSource]:
    from lion_ros.data.sources import FileSource, load_source

    common = {"image_root": args.image_root, "limit": args.limit}
    specs: list[tuple[str, FileSource]] = []
    if args.vqav2:
        specs.append(("vqav2", FileSource("vqav2", args.vqav2[0], args.vqav2[1], **common)))
    if args.coco_captions:
        specs.append(("coco-captions", FileSource("coco_captions", args.coco_captions, per_image=True, **common)))
    if args.refcoco:
        specs.append(("refcoco", FileSource("refcoco", *args.refcoco, split=args.refcoco_split, **common)))
    if args.vsr:
        specs.append(("vsr", FileSource("vsr", args.vsr, split=Path(args.vsr).stem, **common)))
    if args.coco_instances:
        specs.append(("coco-instances", FileSource("coco_instances", args.coco_instances, **common)))
    if args.instructions:
        specs.append(("instructions", FileSource("instructions", args.instructions, split="eval", **common)))
    return [EvalSource(name, list(load_source(spec))) for name, spec in specs]


def load_image(sample: Sample) -> np.ndarray:
    return sample.image if sample.image is not None else load_rgb(sample.image_path)


def image_key(sample: Sample) -> Any:
    return id(sample.image) if sample.image is not None else sample.image_path


def predict(runtime: Any, samples: Sequence[Sample], settings: Any, use_tags: bool, desc: str) -> dict[str, str]:
    """Answer text per sample id; consecutive samples about one image share its encoding."""
    predictions: dict[str, str] = {}
    encoded, current = None, None
    for sample in tqdm(samples, desc=desc, unit="q", dynamic_ncols=True):
        key = image_key(sample)
        if key != current:
            encoded, current = runtime.encode_image(load_image(sample)), key
        answer = runtime.answer(
            encoded, sample.question, tags=sample.tags if use_tags else (), task=sample.task, settings=settings
        )
        predictions[sample.id] = answer.text
    return predictions


def headline(per_task: dict[str, dict[str, float]]) -> dict[str, float | None]:
    return {key: per_task.get(task, {}).get(metric) for key, (task, metric) in HEADLINE.items()}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# lion-eval: {report['model']}", ""]
    settings = report["settings"]
    lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    lines.append("")
    names = list(report["sources"])
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in HEADLINE:
        cells = []
        for name in names:
            value = report["sources"][name]["summary"][key]
            cells.append("–" if value is None else f"{value:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Yes/no is scored strictly: an answer is right only if it states the right verdict, and one "
              "that states none is wrong (no_verdict_rate). *_pope: POPE's rule, under which any answer "
              "without \"no\"/\"not\" is a yes. Counting takes one count, in digits or a number word."]
    for name in names:
        lines += ["", f"## {name} ({report['sources'][name]['num_samples']} questions)", "",
                  "| task | metric | value |", "|---|---|---|"]
        for task, scores in report["sources"][name]["per_task"].items():
            for metric, value in scores.items():
                lines.append(f"| {task} | {metric} | {value:.4g} |")
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[tuple[EvalSource, dict[str, str], float]], out_dir: Path, model_name: str,
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Score each (source, answer text per sample id, seconds it took) and write metrics.json,
    metrics.md and predictions.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": model_name, "settings": settings, "sources": {}}
    with (out_dir / "predictions.jsonl").open("w") as pred_file:
        for source, predictions, seconds in results:
            per_task = score_samples(predictions, source.samples)
            report["sources"][source.name] = {
                "num_samples": len(source.samples),
                "seconds": seconds,
                "summary": headline(per_task),
                "per_task": per_task,
            }
            for sample in source.samples:
                pred_file.write(json.dumps(prediction_row(source.name, sample, predictions[sample.id])) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "metrics.md").write_text(markdown(report))
    return report


def prediction_row(source_name: str, sample: Sample, prediction: str) -> dict[str, str]:
    return {"source": source_name, "id": sample.id, "task": sample.task_name, "question": sample.question,
            "target": sample.answer, "prediction": prediction}


def evaluate(runtime: Any, sources: Sequence[EvalSource], settings: Any, use_tags: bool, out_dir: Path,
             model_name: str, extra_settings: dict[str, Any]) -> dict[str, Any]:
    """Predict and score every source; write metrics.json, metrics.md and predictions.jsonl."""
    results = []
    for source in sources:
        started = time.time()
        predictions = predict(runtime, source.samples, settings, use_tags, source.name)
        results.append((source, predictions, round(time.time() - started, 1)))
    return write_report(results, out_dir, model_name, extra_settings)


def rescore(previous: Path, sources: Sequence[EvalSource], out_dir: Path) -> dict[str, Any]:
    """Score the predictions of the lion-eval output in `previous` against `sources`, which must
    be the samples they were made from (same ids, questions and targets, in the same order)."""
    try:
        old = json.loads((previous / "metrics.json").read_text())
        rows = [json.loads(line) for line in (previous / "predictions.jsonl").read_text().splitlines()]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--rescore {previous}: needs an earlier lion-eval output ({exc})") from None
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    if sorted(by_source) != sorted(s.name for s in sources):
        raise SystemExit(f"--rescore {previous}: its predictions are of {sorted(by_source)}, this command builds "
                         f"{sorted(s.name for s in sources)}; give the sources of the run that made them")
    results = []
    for source in sources:
        made = by_source[source.name]
        expected = [prediction_row(source.name, sample, row["prediction"]) for sample, row in zip(source.samples, made)]
        if len(made) != len(source.samples) or made != expected:
            raise SystemExit(f"--rescore {previous}: the predictions of {source.name} were made from other samples "
                             f"than these {len(source.samples)} (check --num and --first-scene)")
        predictions = {row["id"]: row["prediction"] for row in made}
        results.append((source, predictions, old["sources"][source.name]["seconds"]))
    return write_report(results, out_dir, old["model"], old["settings"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    phrasings = ["templates", "heldout"] if args.phrasing == "both" else [args.phrasing]
    synthetic = ([synthetic_source(args.split, args.num, args.first_scene, p) for p in phrasings]
                 if args.split != "none" else [])
    sources = synthetic + public_sources(args)
    if not sources:
        raise SystemExit("nothing to evaluate: give --split test|compositional or a public-format file")
    if args.rescore:
        print(markdown(rescore(Path(args.rescore), sources, Path(args.out))))
        return 0
    import torch

    from lion_ros.runtime.backends import load_runtime
    from lion_ros.runtime.base import GenerationSettings

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    runtime = load_runtime(args.backend, args.model, args.device, threads=args.threads or None)
    settings = GenerationSettings(
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty
    )
    report = evaluate(
        runtime, sources, settings, not args.no_tags, Path(args.out), str(args.model),
        {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
         "repetition_penalty": args.repetition_penalty, "tags": not args.no_tags, "device": args.device,
         "backend": args.backend},
    )
    print(markdown(report))
    return 0
