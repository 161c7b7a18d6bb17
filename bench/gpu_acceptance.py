#!/usr/bin/env python3
"""The GPU acceptance run (issue 35 item 4): one command, run first whenever a GPU is available.

Steps, each timed; a failing step is recorded and the others still run:

  environment          GPU, driver, CUDA, torch, TensorRT importable or not, ONNX / ONNX Runtime
  precision_agreement  the mixed dtype policy (ViT fp16, T5 bf16) against an fp32 copy of the same
                       seeded random weights: first-step logits and greedy tokens on 3 prompts
  stage_latency        image encode, prefill, decode ms/token, end to end and peak memory at batch
                       1 and 4; through the runtime: a REC answer on a new frame and a second
                       question on the same (cached) frame
  cuda_graph_tests     tests/test_cuda_graphs.py -m gpu: real CUDA-graph capture of the decoder step
  tensorrt_engine_tests tests/test_engines_gpu.py: TensorRT engines and their parity
  onnx_export          the four graphs exported (bf16 plan), each checked by onnx.checker
  vs_transformers      bench/bench_vs_transformers.py at this run's size (item 1 of the issue)

GPU (default): lion-4b with seeded random weights on CUDA. `--tiny`: every step at lion-tiny size
on the CPU, the CUDA-only steps recorded as skipped with the reason, so that CI keeps this script
working. The pytest steps fail on any skipped test when a GPU is present; without TensorRT (the GPU
machines available to this project have none) they are recorded as skipped with that reason, unless
`--require-tensorrt`.

Output, all in --out: acceptance.json (every step: status, seconds, reason, details),
acceptance.md (the same as tables) and one log per subprocess step. Exit status 1 if any step failed.
Steps that would start after --budget-s are recorded as failed (not started) and the subprocess
steps are stopped at it, so the run stays inside its time slot.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_vs_transformers import cpu_name, interleaved_medians

from lion_ros.api import GenerationSettings, TaskKind
from lion_ros.model import LionConfig, LionModel
from lion_ros.model.generation import decode
from lion_ros.runtime.pytorch import PyTorchRuntime
from lion_ros.tokenization import LionTokenizers

ROOT = Path(__file__).resolve().parents[1]
NANO_DIR = ROOT / "lion_ros" / "assets" / "lion-nano"
# onnx_export before vs_transformers: the export runs in this process and cannot be stopped, the
# benchmark is a subprocess that the time budget can stop.
STEPS = ("environment", "precision_agreement", "stage_latency", "cuda_graph_tests", "tensorrt_engine_tests",
         "onnx_export", "vs_transformers")
PROMPTS = (("where is the red cup?", TaskKind.REGION), ("What is in the image?", TaskKind.IMAGE),
           ("the person on the left of the table", TaskKind.REGION))
# Cosine similarity of the first-step logits, mixed vs fp32: bf16 keeps ~3 significant digits, so
# the same weights give nearly parallel logit vectors; a broken cast (overflow, a module left in
# the wrong dtype) does not. Greedy tokens are recorded, not gated: with random weights the top
# logits are near ties that bf16 rounding flips.
MIN_LOGITS_COSINE = 0.99
TENSORRT_SKIP = "TensorRT 10+ is not importable"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run does; everything that differs between the GPU run and `--tiny` is here."""

    size: str
    device: str
    new_tokens: int  # greedy tokens per precision prompt and per timed end-to-end run
    repeats: int
    batch_sizes: tuple[int, ...]
    answer_tokens: int  # the REC answer of the runtime rows
    bench_args: tuple[str, ...]  # bench/bench_vs_transformers.py
    export_precision: str


GPU_PLAN = Plan("lion-4b", "cuda", 32, 5, (1, 4), 30, (
    "--device", "cuda", "--sizes", "lion-4b", "--dtype", "bfloat16", "--threads", str(os.cpu_count() or 1),
    "--repeats", "3", "--new-tokens", "16", "--beams", "1", "5", "--batch-sizes", "1", "4"), "bf16")
TINY_PLAN = Plan("lion-tiny", "cpu", 8, 2, (1, 4), 8, (
    "--sizes", "tiny", "--threads", "1", "--repeats", "1", "--new-tokens", "4", "--beams", "1",
    "--batch-sizes", "1"), "bf16")


class StepSkipped(Exception):
    """A step that cannot run here (CUDA-only on the CPU, TensorRT missing); not a failure."""


@dataclasses.dataclass
class Context:
    plan: Plan
    out: Path
    require_tensorrt: bool
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizers: LionTokenizers | None = None
    mixed: LionModel | None = None  # the mixed-policy model, shared by the steps after precision_agreement
    deadline: float = float("inf")  # time.perf_counter() by which every step must have started

    def remaining_s(self) -> float:
        return self.deadline - time.perf_counter()


# -- models ----------------------------------------------------------------------------------------

def model_config(size: str, tokenizers: LionTokenizers) -> LionConfig:
    """The preset with the shipped nano tokenizers' ids (the vocabularies only grow, never shrink:
    lion-4b keeps its 32128 rows)."""
    config = LionConfig.preset(size)
    language = dataclasses.replace(config.language, vocab_size=max(config.language.vocab_size, len(tokenizers.t5)),
                                   soft_prompt_token_id=tokenizers.tag_token_id)
    qformer = dataclasses.replace(config.qformer, vocab_size=max(config.qformer.vocab_size, len(tokenizers.qformer)))
    return dataclasses.replace(config, language=language, qformer=qformer)


def seeded_model(config: LionConfig, device: str) -> LionModel:
    """The model's own initialisation under seed 0, made directly on `device` (lion-4b's 4 B
    parameters initialise in seconds on a GPU, minutes on CPU threads)."""
    torch.manual_seed(0)
    with torch.device(device):
        return LionModel(config).eval()


def rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# -- steps -------------------------------------------------------------------------------------------

def step_environment(ctx: Context) -> dict[str, Any]:
    from lion_ros.export.engines import TensorRTUnavailable, import_tensorrt

    facts: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     compute_capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    try:
        facts["tensorrt"] = import_tensorrt().__version__
    except TensorRTUnavailable as exc:
        facts["tensorrt"] = None
        facts["tensorrt_reason"] = str(exc)
    for name in ("onnx", "onnxruntime", "transformers", "tokenizers", "safetensors", "pycuda"):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            facts[name] = None
    if facts["onnxruntime"]:
        import onnxruntime

        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    ctx.environment = facts
    return facts


def step_precision_agreement(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    ctx.tokenizers = LionTokenizers.load(NANO_DIR)
    reference = seeded_model(model_config(plan.size, ctx.tokenizers), plan.device)
    mixed = copy.deepcopy(reference).apply_dtype_policy(plan.device, "mixed")
    runtimes = {"fp32": PyTorchRuntime(reference, ctx.tokenizers, plan.device),
                "mixed": PyTorchRuntime(mixed, ctx.tokenizers, plan.device)}
    settings = GenerationSettings(num_beams=1, max_new_tokens=plan.new_tokens, repetition_penalty=1.0)
    prompts, failures = [], []
    for seed, (question, task) in enumerate(PROMPTS):
        logits, tokens = {}, {}
        for name, runtime in runtimes.items():
            logits[name], tokens[name] = _first_logits_and_greedy(runtime, rgb(seed), question, task, settings)
        a, b = logits["fp32"], logits["mixed"]
        cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
        common = next((i for i, (x, y) in enumerate(zip(tokens["fp32"], tokens["mixed"])) if x != y),
                      min(len(tokens["fp32"]), len(tokens["mixed"])))
        row = {"question": question, "finite": bool(torch.isfinite(b).all()), "logits_cosine": round(cosine, 6),
               "max_abs_diff": round(float((a - b).abs().max()), 4),
               "fp32_logits_absmax": round(float(a.abs().max()), 3),
               "first_token_equal": int(a.argmax()) == int(b.argmax()),
               "greedy_equal": tokens["fp32"] == tokens["mixed"],
               "greedy_common_prefix": common, "greedy_tokens": len(tokens["fp32"])}
        prompts.append(row)
        if not row["finite"] or cosine < MIN_LOGITS_COSINE:
            failures.append(f"{question!r}: finite {row['finite']}, logits cosine {cosine:.4f} < {MIN_LOGITS_COSINE}")
    parameters = sum(p.numel() for p in reference.parameters())
    del runtimes, reference
    ctx.mixed = mixed
    _free(plan.device)
    details = {"size": plan.size, "parameters": parameters, "min_logits_cosine": MIN_LOGITS_COSINE, "prompts": prompts}
    if failures:
        raise StepFailed("; ".join(failures), details)
    return details


def step_stage_latency(ctx: Context) -> dict[str, Any]:
    plan, model, tokenizers = ctx.plan, _need(ctx.mixed, "the mixed model"), _need(ctx.tokenizers, "tokenizers")
    runtime = PyTorchRuntime(model, tokenizers, plan.device)
    prompt = runtime.encode_prompt(PROMPTS[0][0])
    vit_dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    size = model.config.vision.image_size
    rows = []
    for batch_size in plan.batch_sizes:
        def rows_of(array: np.ndarray, b: int = batch_size) -> torch.Tensor:
            return torch.from_numpy(array).to(plan.device).expand(b, -1).contiguous()

        pixels = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(batch_size))
        pixels = pixels.to(plan.device, vit_dtype)
        ids, mask = rows_of(prompt.input_ids), rows_of(prompt.attention_mask)
        qids, qmask = rows_of(prompt.qformer_input_ids), rows_of(prompt.qformer_attention_mask)
        task = torch.full((batch_size,), int(TaskKind.REGION), device=plan.device)
        generated: list[int] = []

        @torch.inference_mode()
        def prefill(features: Any, ids: torch.Tensor = ids, mask: torch.Tensor = mask, qids: torch.Tensor = qids,
                    qmask: torch.Tensor = qmask, task: torch.Tensor = task) -> tuple[torch.Tensor, torch.Tensor]:
            return model.encode(model.visual_prefix(features, qids, qmask), ids, mask, task)

        @torch.inference_mode()
        def end_to_end(tokens: int, pixels: torch.Tensor = pixels, task: torch.Tensor = task,
                       generated: list[int] = generated) -> None:
            states, encoder_mask = prefill(model.encode_image(pixels))
            settings = GenerationSettings(num_beams=1, max_new_tokens=tokens, repetition_penalty=1.0)
            generated.append(max(decode(model, states, encoder_mask, task, settings).lengths))

        stages: dict[str, Callable[[], Any]] = {
            "encode": lambda pixels=pixels: torch.inference_mode()(model.encode_image)(pixels),
            "prefill": lambda pixels=pixels: prefill(torch.inference_mode()(model.encode_image)(pixels)),
            "e2e": lambda: end_to_end(plan.new_tokens),
            "e2e1": lambda: end_to_end(1),
        }
        _reset_peak(plan.device)
        medians = interleaved_medians({"lion_ros": stages}, list(stages), plan.repeats, plan.device)
        tokens = max(generated)  # EOS is id 1 of a random model's 32128: all runs generate the full length
        decode_ms = (medians["lion_ros", "e2e"] - medians["lion_ros", "e2e1"]) / max(tokens - 1, 1)
        rows.append({"batch": batch_size, "encode_ms": round(medians["lion_ros", "encode"], 2),
                     "prefill_ms": round(medians["lion_ros", "prefill"], 2), "decode_ms_per_token": round(decode_ms, 3),
                     "end_to_end_ms": round(medians["lion_ros", "e2e"], 2), "new_tokens": tokens,
                     "peak_memory_gib": _peak_gib(plan.device)})
    return {"size": plan.size, "dtype_policy": "mixed", "repeats": plan.repeats,
            "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
            "batches": rows, "answers": _runtime_answers(runtime, plan)}


def step_cuda_graph_tests(ctx: Context) -> dict[str, Any]:
    return _gpu_pytest(ctx, "cuda_graph_tests", ["tests/test_cuda_graphs.py", "-m", "gpu"])


def step_tensorrt_engine_tests(ctx: Context) -> dict[str, Any]:
    return _gpu_pytest(ctx, "tensorrt_engine_tests", ["tests/test_engines_gpu.py"])


def step_vs_transformers(ctx: Context) -> dict[str, Any]:
    command = [sys.executable, "bench/bench_vs_transformers.py", *ctx.plan.bench_args]  # run in ROOT
    run = _logged_run(command, ctx.out / "vs_transformers.log", ctx.remaining_s())
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    details = {"command": " ".join(command[1:]), "returncode": run.returncode, "table": table}
    if run.returncode != 0:
        raise StepFailed(f"bench_vs_transformers exited {run.returncode}: {run.stderr.strip()[-300:]}", details)
    return details


def step_onnx_export(ctx: Context) -> dict[str, Any]:
    from lion_ros.export.onnx import ExportConfig, export_onnx

    model = _need(ctx.mixed, "the mixed model")
    ctx.mixed = None  # export casts in place: this is the last step that uses the model
    model = model.cpu()  # the exporter traces with CPU sample inputs
    _free(ctx.plan.device)
    with tempfile.TemporaryDirectory(prefix="lion-onnx-") as tmp:
        specs = export_onnx(model, tmp, ExportConfig(precision=ctx.plan.export_precision))
        graphs = {}
        for name, spec in specs.items():
            files = sorted(Path(tmp).glob(f"{name}.onnx*"))
            graphs[name] = {"files": [f.name for f in files],
                            "mib": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                            "inputs": list(spec.inputs), "outputs": list(spec.outputs)}
    # export_onnx runs onnx.checker.check_model on every file it writes (a failure raises).
    return {"precision": ctx.plan.export_precision, "checked_with": "onnx.checker.check_model", "graphs": graphs}


# -- step helpers --------------------------------------------------------------------------------------

class StepFailed(Exception):
    """A step that ran and found something wrong; `details` still go into the report."""

    def __init__(self, reason: str, details: dict[str, Any]) -> None:
        super().__init__(reason)
        self.details = details


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise RuntimeError(f"{what} is missing: the step that makes it (precision_agreement) failed")
    return value


@torch.inference_mode()
def _first_logits_and_greedy(runtime: PyTorchRuntime, image: np.ndarray, question: str, task: TaskKind,
                             settings: GenerationSettings) -> tuple[torch.Tensor, list[int]]:
    """First decoder step's logits [vocab] (fp32) and the greedy token ids of one question."""
    encoded = runtime.encode_image(image)
    states, mask = runtime._prefill(encoded.features, runtime.encode_prompt(question), task)
    step, index = runtime._decoder_step(), torch.tensor([int(task)], device=runtime.device)
    cache = step.new_cache(states, mask, 1, 1)
    start = torch.full((1,), runtime.config.language.decoder_start_token_id, device=runtime.device)
    logits = step.forward(start, torch.zeros(1, dtype=torch.long, device=runtime.device), cache, index)
    output = decode(None, states, mask, index, settings, step=step)
    return logits[0].float().cpu(), output.tokens(0)


def _runtime_answers(runtime: PyTorchRuntime, plan: Plan) -> dict[str, Any]:
    """The user-visible path: `answer()` on a new frame (vision included) and a second question on
    the same frame (vision skipped), median of `plan.repeats` after a warm-up."""
    settings = GenerationSettings(num_beams=1, max_new_tokens=plan.answer_tokens, repetition_penalty=1.0)
    new_frame, cached, tokens = [], [], []
    for seed in range(plan.repeats + 1):
        image = runtime.encode_image(rgb(100 + seed))
        first = runtime.answer(image, "where is the red cup?", task=TaskKind.REGION, settings=settings)
        second = runtime.answer(image, "where is the blue bowl?", task=TaskKind.REGION, settings=settings)
        if seed:  # the first round warms up
            new_frame.append(first.timings.total_ms)
            cached.append(second.timings.total_ms - image.encode_ms)
            tokens.append(first.timings.tokens_generated)
    return {"rec_new_frame_ms": round(float(np.median(new_frame)), 2),
            "rec_cached_frame_ms": round(float(np.median(cached)), 2),
            "tokens_generated": tokens, "max_new_tokens": plan.answer_tokens}


def _gpu_pytest(ctx: Context, name: str, args: list[str]) -> dict[str, Any]:
    """Run GPU tests. On the CPU only their collection is checked; on a GPU every skip is a failure,
    except TensorRT's own when TensorRT is absent and not required."""
    log = ctx.out / f"{name}.log"
    if not torch.cuda.is_available():
        run = _logged_run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
                          log, ctx.remaining_s())
        if run.returncode != 0:
            raise StepFailed(f"the GPU tests do not collect (pytest exited {run.returncode})", {"log": log.name})
        collected = sum("::" in line for line in run.stdout.splitlines())
        raise StepSkipped(f"no CUDA device: {collected} GPU tests collected, not run")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        run = _logged_run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}",
                           *args], log, ctx.remaining_s())
        cases = ET.parse(junit).getroot().iter("testcase") if junit.is_file() else iter(())
        outcomes = [_outcome(case) for case in cases]
    skips = [message for outcome, message in outcomes if outcome == "skipped"]
    details = {"returncode": run.returncode, "tests": len(outcomes), "log": log.name,
               "outcomes": {o: sum(x == o for x, _ in outcomes) for o in ("passed", "failed", "skipped")},
               "skip_reasons": sorted(set(skips))}
    if not outcomes:
        raise StepFailed("no GPU test ran (none collected)", details)
    if run.returncode not in (0, 5) or details["outcomes"]["failed"]:
        raise StepFailed(f"pytest exited {run.returncode}: {details['outcomes']}", details)
    if skips and not ctx.require_tensorrt and ctx.environment.get("tensorrt") is None \
            and all(TENSORRT_SKIP in s for s in skips):
        raise StepSkipped(f"{TENSORRT_SKIP} here: all {len(skips)} tests need it (carry it, see bench/README.md)")
    if skips:
        raise StepFailed(f"{len(skips)} GPU tests skipped on a GPU: {sorted(set(skips))}", details)
    return details


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error"):
        if case.find(tag) is not None:
            return "failed", case.find(tag).get("message", "")
    skipped = case.find("skipped")
    if skipped is not None:
        return "skipped", skipped.get("message", "")
    return "passed", ""


def _logged_run(command: list[str], log: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"$ {' '.join(command)}\n{exc.stdout or ''}\n{exc.stderr or ''}")
        raise RuntimeError(f"stopped after {timeout_s:.0f} s: the run's time budget was spent") from exc
    log.write_text(f"$ {' '.join(command)}\n{run.stdout}\n--- stderr ---\n{run.stderr}")
    return run


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


STEP_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": step_environment, "precision_agreement": step_precision_agreement,
    "stage_latency": step_stage_latency, "cuda_graph_tests": step_cuda_graph_tests,
    "tensorrt_engine_tests": step_tensorrt_engine_tests, "vs_transformers": step_vs_transformers,
    "onnx_export": step_onnx_export,
}


# -- the run -------------------------------------------------------------------------------------------

def run_steps(ctx: Context, budget_s: float) -> list[dict[str, Any]]:
    ctx.deadline = time.perf_counter() + budget_s
    results = []
    for name in STEPS:
        result: dict[str, Any] = {"step": name}
        if ctx.remaining_s() <= 0:
            result.update(status="failed", seconds=0.0, reason=f"not started: the {budget_s:.0f} s budget was spent")
            results.append(result)
            continue
        print(f"[acceptance] {name} ...", flush=True)
        step_started = time.perf_counter()
        try:
            result.update(status="passed", details=STEP_FUNCTIONS[name](ctx))
        except StepSkipped as exc:
            result.update(status="skipped", reason=str(exc))
        except StepFailed as exc:
            result.update(status="failed", reason=str(exc), details=exc.details)
        except Exception as exc:  # every failure is recorded; the other steps still run
            result.update(status="failed", reason=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc()[-4000:])
        result["seconds"] = round(time.perf_counter() - step_started, 2)
        print(f"[acceptance] {name}: {result['status']} in {result['seconds']} s {result.get('reason', '')}",
              flush=True)
        results.append(result)
    return results


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU acceptance: {report['mode']} ({report['size']}, {report['device']})", "",
             f"Machine: {env.get('gpu') or 'no GPU'} | {env.get('nvidia_smi', '')} | CPU {env.get('cpu')} "
             f"({env.get('cpu_count')} cores) | torch {env.get('torch')} (CUDA {env.get('torch_cuda')}) | "
             f"TensorRT {env.get('tensorrt') or 'not importable'} | total {report['seconds']} s", "",
             "| step | status | seconds | reason |", "|---|---|---|---|"]
    for step in report["steps"]:
        lines.append(f"| {step['step']} | {step['status']} | {step['seconds']} | {step.get('reason', '')} |")
    by_name = {step["step"]: step.get("details") or {} for step in report["steps"]}
    prompts = by_name["precision_agreement"].get("prompts", [])
    if prompts:
        lines += ["", "## Mixed policy vs fp32 (same weights)", "",
                  "| question | logits cosine | max abs diff | first token equal | greedy equal | common prefix |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['question']} | {p['logits_cosine']} | {p['max_abs_diff']} | {p['first_token_equal']} | "
                  f"{p['greedy_equal']} | {p['greedy_common_prefix']}/{p['greedy_tokens']} |" for p in prompts]
    latency = by_name["stage_latency"]
    if latency.get("batches"):
        lines += ["", f"## Stage latency ({latency['dtype_policy']} policy, median of {latency['repeats']}; "
                  f"weights {latency['weights_gib']} GiB)", "",
                  "| batch | encode ms | prefill ms | decode ms/token | end to end ms | new tokens | peak GiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['encode_ms']} | {r['prefill_ms']} | {r['decode_ms_per_token']} | "
                  f"{r['end_to_end_ms']} | {r['new_tokens']} | {r['peak_memory_gib']} |" for r in latency["batches"]]
        answers = latency["answers"]
        lines += ["", f"Runtime `answer()`, REC, up to {answers['max_new_tokens']} tokens (generated "
                  f"{answers['tokens_generated']}): new frame {answers['rec_new_frame_ms']} ms, second question on "
                  f"the same frame {answers['rec_cached_frame_ms']} ms."]
    table = by_name["vs_transformers"].get("table")
    if table:
        lines += ["", "## lion_ros vs transformers", "", f"`{by_name['vs_transformers']['command']}`", "", *table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="lion-tiny on the CPU (CI); CUDA-only steps skip")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "acceptance-out"))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="steps not started by then are failed (default 460 on a GPU, 240 with --tiny)")
    parser.add_argument("--require-tensorrt", action="store_true",
                        help="fail, not skip, the TensorRT test steps when TensorRT is not importable")
    args = parser.parse_args(argv)
    plan = TINY_PLAN if args.tiny else GPU_PLAN
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: the acceptance run needs a GPU (or --tiny for the CPU check)")
    if args.tiny:
        torch.set_num_threads(1)  # the CI machines have 2 shared cores
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan, args.out, args.require_tensorrt)
    started = time.perf_counter()
    steps = run_steps(ctx, args.budget_s or (240.0 if args.tiny else 460.0))
    report = {"mode": "tiny" if args.tiny else "gpu", "size": plan.size, "device": plan.device,
              "seconds": round(time.perf_counter() - started, 1), "environment": ctx.environment,
              "steps": steps, "failed": [s["step"] for s in steps if s["status"] == "failed"]}
    (args.out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "acceptance.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
