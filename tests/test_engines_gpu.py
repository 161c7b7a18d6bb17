"""TensorRT (and ONNX Runtime CUDA) on a real GPU, on a tiny random model.

Skipped, with the reason, where there is no CUDA device or no TensorRT 10+: that is every
development and CI machine of this project so far (see docs/deployment.md for what ran where).

Tolerances: fp32 engines must give the PyTorch token ids exactly; bf16 / fp16 engines are
compared on the first-step logits of the fp32 PyTorch model (max abs difference 0.1; the
model's logits are O(1)) and must produce finite values everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_lion import rgb_image

from lion_ros.api import TaskKind
from lion_ros.export.engines import ProfileConfig, tensorrt_available
from lion_ros.model.generation import GenerationSettings, decode
from lion_ros.runtime.pytorch import PyTorchRuntime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the TensorRT paths need a GPU"),
    pytest.mark.skipif(not tensorrt_available(), reason="TensorRT 10+ is not importable here (optional dependency)"),
]
PROFILES = ProfileConfig(max_batch=1, max_beams=3, max_new_tokens=16, max_prompt_tokens=128)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> PyTorchRuntime:
    return PyTorchRuntime.from_pretrained(model_dir, device="cuda", dtype="fp32")


def _decode(runtime, rgb: np.ndarray, question: str, beams: int) -> tuple[list[int], torch.Tensor]:
    image = runtime.encode_image(rgb)
    states, mask = runtime._prefill(image.features, runtime.encode_prompt(question), TaskKind.REGION)
    step = runtime._decoder_step()
    cache = step.new_cache(states, mask, 8, 1)
    first = step.forward(torch.zeros(1, dtype=torch.long, device=step.device), torch.zeros(1, dtype=torch.long,
                         device=step.device), cache, torch.tensor([0], device=step.device)).float().cpu()
    config = GenerationSettings(max_new_tokens=12, num_beams=beams)
    output = decode(None, states, mask, torch.tensor([0]), config, step=step)
    return output.tokens(0), first


@pytest.mark.parametrize("beams", [1, 3])
def test_fp32_engines_give_pytorch_token_ids(
    model_dir: Path, reference: PyTorchRuntime, tmp_path: Path, beams: int
) -> None:
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime.from_pretrained(model_dir, precision="fp32", profiles=PROFILES, engine_dir=tmp_path / "e")
    for seed in range(3):
        rgb = rgb_image(seed=seed)
        expected, _ = _decode(reference, rgb, "where is the red cup?", beams)
        assert _decode(runtime, rgb, "where is the red cup?", beams)[0] == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_engines_stay_close(model_dir: Path, reference: PyTorchRuntime, tmp_path: Path,
                                              precision: str) -> None:
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    runtime = TensorRTRuntime.from_pretrained(model_dir, precision=precision, profiles=PROFILES,
                                              engine_dir=tmp_path / precision)
    rgb = rgb_image(seed=1)
    _, expected = _decode(reference, rgb, "where is the red cup?", 1)
    _, logits = _decode(runtime, rgb, "where is the red cup?", 1)
    assert torch.isfinite(logits).all()
    assert (logits - expected).abs().max() < 0.1
    answer = runtime.answer(runtime.encode_image(rgb), "What is in the image?", task=TaskKind.IMAGE)
    assert answer.timings.decode_ms > 0


def test_onnxruntime_cuda_matches_pytorch(model_dir: Path, reference: PyTorchRuntime, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider here (needs onnxruntime-gpu)")
    from lion_ros.runtime.onnxruntime import OnnxRuntimeRuntime

    runtime = OnnxRuntimeRuntime.from_pretrained(model_dir, device="cuda", engine_dir=tmp_path / "ort")
    rgb = rgb_image(seed=2)
    question = "where is the red cup?"
    assert _decode(runtime, rgb, question, 3)[0] == _decode(reference, rgb, question, 3)[0]
