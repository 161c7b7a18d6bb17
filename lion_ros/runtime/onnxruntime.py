"""The ONNX Runtime backend: the exported graphs on CPU, or on CUDA with onnxruntime-gpu.

Arrays stay `OrtValue`s on the session's device between graphs (IOBinding), so with the CUDA
provider the features, cross-attention K/V and the self-attention buffers never visit the
host; only the logits come back each step, for the search loops in PyTorch on the CPU.
ONNX Runtime runs the fp32 export (the default) and the fp16 one; it has no CPU kernels for the
bf16 graphs built for TensorRT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from lion_ros.export.engines import EngineMetadata
from lion_ros.runtime.engine_base import EngineRuntime, HostOrDevice
from lion_ros.runtime.pipeline import DEFAULT_RUNTIME_CONFIG, RuntimeConfig

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeRuntime(EngineRuntime):
    """`LionRuntime` over the ONNX graphs of an engine directory."""

    name = "onnxruntime"

    def __init__(
        self,
        engine_dir: Path,
        metadata: EngineMetadata,
        device: str = "cpu",
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
        threads: int | None = None,
    ) -> None:
        if device not in PROVIDERS:
            raise ValueError(f"device must be one of {', '.join(PROVIDERS)}, got {device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device 'cuda' needs onnxruntime-gpu (the CUDA execution provider is not available "
                               f"in this onnxruntime; it has {ort.get_available_providers()})")
        if metadata.precision == "bf16":
            raise ValueError(f"{engine_dir} holds the bf16 export made for TensorRT; ONNX Runtime needs an fp32 or "
                             "fp16 export (lion-build-engines --precision fp32 --onnx-only)")
        super().__init__(engine_dir, metadata, runtime_config)
        self.device_type = device
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self._sessions = {
            name: ort.InferenceSession(str(metadata.onnx_path(engine_dir, name)), options, providers=PROVIDERS[device])
            for name in metadata.graphs
        }
        self._inputs = {name: [i.name for i in s.get_inputs()] for name, s in self._sessions.items()}
        self._outputs = {name: [o.name for o in s.get_outputs()] for name, s in self._sessions.items()}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        precision: str | None = None,
        *,
        engine_dir: str | Path | None = None,
        rebuild_on_mismatch: bool = False,
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
        threads: int | None = None,
    ) -> OnnxRuntimeRuntime:
        """From an engine directory (`lion-build-engines`) or a model directory.

        precision: "fp32" or "fp16" (a key of export.graphs.PRECISIONS), or the node's names:
        "auto"/None = what an engine directory holds, fp32 for a model directory.

        A model directory is exported on first use (fp32 unless `precision` says otherwise) into
        `engine_dir`, default $LION_ENGINE_CACHE or ~/.cache/lion_ros/engines, and re-exported
        when the weights or the export code change. An engine directory that does not match
        (`precision` given and different, other weights, older export code) raises
        `EngineMismatchError` unless `rebuild_on_mismatch`.
        """
        directory, metadata = cls._open(
            path, backend="onnxruntime", precision=precision, default_precision="fp32", profiles=None,
            engine_dir=engine_dir, rebuild_on_mismatch=rebuild_on_mismatch,
        )
        return cls(directory, metadata, device, runtime_config, threads)

    # -- EngineRuntime ---------------------------------------------------------------------------

    def _run(self, graph: str, inputs: dict[str, Any]) -> dict[str, ort.OrtValue]:
        session = self._sessions[graph]
        binding = session.io_binding()
        for name in self._inputs[graph]:
            binding.bind_ortvalue_input(name, inputs[name])
        for name in self._outputs[graph]:
            binding.bind_output(name, self.device_type)
        session.run_with_iobinding(binding)
        return dict(zip(self._outputs[graph], binding.get_outputs()))

    def _array(self, value: HostOrDevice) -> ort.OrtValue:
        if isinstance(value, ort.OrtValue):
            return value
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device_type)

    def _zeros(self, shape: tuple[int, ...], dtype: str) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), self.device_type)

    def _logits(self, value: ort.OrtValue) -> torch.Tensor:
        return torch.from_numpy(value.numpy())

    def _shape(self, value: ort.OrtValue) -> tuple[int, ...]:
        return tuple(value.shape())

