"""The ONNX Runtime backend against the PyTorch runtime, end to end on a tiny random model.

fp32 graphs on the CPU: the greedy and beam-search token ids must be identical (the logits
differ by ~1e-6, far below the gaps between candidates of this model), and so must the answers,
boxes, and streamed partial answers.
"""
from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_lion import rgb_image

from lion_ros.api import TaskKind
from lion_ros.export.engines import EngineMetadata, EngineMismatchError
from lion_ros.model.generation import decode
from lion_ros.runtime.base import GenerationSettings, RequestCancelled
from lion_ros.runtime.onnxruntime import OnnxRuntimeRuntime
from lion_ros.runtime.pytorch import PyTorchRuntime

NANO = Path(__file__).resolve().parents[1] / "lion_ros" / "assets" / "lion-nano"
QUESTIONS = [
    ("where is the red cup?", None),  # region, box-constrained
    ("What is in the image?", TaskKind.IMAGE),
    ("describe the blue bowl and include the coordinates", TaskKind.REGION),  # region, free text
]


@pytest.fixture(scope="module")
def runtimes(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PyTorchRuntime, OnnxRuntimeRuntime]:
    engines = tmp_path_factory.mktemp("engines") / "tiny-fp32"
    return PyTorchRuntime.from_pretrained(model_dir), OnnxRuntimeRuntime.from_pretrained(
        model_dir, engine_dir=engines, threads=1)


def _token_ids(runtime, image, question: str, task: TaskKind, beams: int) -> list[int]:
    prompt = runtime.encode_prompt(question)
    states, mask = runtime._prefill(image.features, prompt, task)
    config = GenerationSettings(max_new_tokens=12, num_beams=beams, repetition_penalty=1.5)
    output = decode(None, states, mask, torch.tensor([int(task)]), config, step=runtime._decoder_step())
    return output.tokens(0)


@pytest.mark.parametrize("beams", [1, 3])
def test_token_ids_identical_to_pytorch(runtimes, beams: int) -> None:
    torch_rt, onnx_rt = runtimes
    for seed in range(3):
        rgb = rgb_image(seed=seed)
        for question, task in QUESTIONS:
            task = task or TaskKind.REGION
            expected = _token_ids(torch_rt, torch_rt.encode_image(rgb), question, task, beams)
            assert _token_ids(onnx_rt, onnx_rt.encode_image(rgb), question, task, beams) == expected


def test_answers_boxes_and_streaming_identical(runtimes) -> None:
    torch_rt, onnx_rt = runtimes
    rgb = rgb_image(seed=4)
    for question, task in QUESTIONS:
        results = []
        for runtime in (torch_rt, onnx_rt):
            partials: list[tuple[str, int]] = []
            answer = runtime.answer(runtime.encode_image(rgb), question, task=task,
                                    settings=GenerationSettings(num_beams=1, max_new_tokens=16),
                                    on_partial=lambda text, n, partials=partials: partials.append((text, n)))
            results.append((answer.text, answer.task, answer.boxes, partials, answer.timings.tokens_generated))
        assert results[0] == results[1]


def test_cancel_stops_generation(runtimes) -> None:
    _, onnx_rt = runtimes
    cancel = threading.Event()
    calls = []

    def on_partial(text: str, n: int) -> None:
        calls.append(n)
        cancel.set()

    with pytest.raises(RequestCancelled):
        onnx_rt.answer(onnx_rt.encode_image(rgb_image()), "What is in the image?", task=TaskKind.IMAGE,
                       settings=GenerationSettings(num_beams=1, max_new_tokens=16), on_partial=on_partial,
                       cancel=cancel)
    assert calls == [1]


def test_engine_dir_loads_without_the_model(runtimes, tmp_path: Path) -> None:
    """An engine directory is self-contained: config, tokenizers and graphs (what ships to a robot)."""
    _, onnx_rt = runtimes
    shipped = tmp_path / "shipped"
    shutil.copytree(onnx_rt.engine_dir, shipped)
    runtime = OnnxRuntimeRuntime.from_pretrained(shipped, threads=1)
    image = rgb_image(seed=2)
    settings = GenerationSettings(num_beams=1, max_new_tokens=8)
    question = "What is in the image?"
    assert runtime.answer(runtime.encode_image(image), question, settings=settings).text == onnx_rt.answer(
        onnx_rt.encode_image(image), question, settings=settings).text
    with pytest.raises(EngineMismatchError, match="precision: exported as fp32, asked for fp16"):
        OnnxRuntimeRuntime.from_pretrained(shipped, precision="fp16")


def test_bf16_export_is_refused_with_a_reason(runtimes, tmp_path: Path) -> None:
    _, onnx_rt = runtimes
    metadata = EngineMetadata.load(onnx_rt.engine_dir)
    metadata.precision = "bf16"
    with pytest.raises(ValueError, match="bf16 export made for TensorRT"):
        OnnxRuntimeRuntime(onnx_rt.engine_dir, metadata)


@pytest.mark.skipif(not (NANO / "config.json").is_file(), reason=f"trained lion-nano not present at {NANO}")
def test_lion_nano_answers_identical(tmp_path: Path) -> None:
    torch_rt = PyTorchRuntime.from_pretrained(NANO)
    onnx_rt = OnnxRuntimeRuntime.from_pretrained(NANO, engine_dir=tmp_path / "nano", threads=1)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for question, task in QUESTIONS:
        for beams in (1, 5):
            settings = GenerationSettings(num_beams=beams, max_new_tokens=32)
            expected = torch_rt.answer(torch_rt.encode_image(rgb), question, task=task, settings=settings)
            answer = onnx_rt.answer(onnx_rt.encode_image(rgb), question, task=task, settings=settings)
            # Identical tokens, hence text and box coordinates; the box score is a probability
            # computed in float32 by two engines, equal to rounding.
            assert answer.text == expected.text
            assert [dataclasses.replace(b, score=0.0) for b in answer.boxes] == [
                dataclasses.replace(b, score=0.0) for b in expected.boxes]
            assert [b.score for b in answer.boxes] == pytest.approx([b.score for b in expected.boxes], abs=1e-5)
