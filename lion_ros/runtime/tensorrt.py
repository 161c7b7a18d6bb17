"""The TensorRT backend (TensorRT 10+ "V3" API): the four engines of an engine directory on one GPU.

    engine I/O      set_input_shape / set_tensor_address per call, execute_async_v3 on one stream
    activations     one scratch buffer shared by all engines (they never run concurrently), given
                    to every execution context (ExecutionContextAllocationStrategy.USER_MANAGED)
    device arrays   torch CUDA tensors where torch has CUDA (the search loops then stay on the
                    GPU and only EOS checks sync); otherwise pycuda arrays in the device's primary
                    context (the one the CUDA runtime and TensorRT use), with the search on the CPU
    checks          engine metadata (TensorRT version, GPU, compute capability, profiles, source)
                    is compared before any plan is deserialised: see lion_ros.export.engines

tensorrt is imported lazily: this module imports everywhere, and `TensorRTRuntime` raises
`TensorRTUnavailable` with install hints where TensorRT is missing. Written against the
documented TensorRT 10 Python API; see engines/README.md for what was executed where.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from lion_ros.export.engines import EngineMetadata, ProfileConfig, import_tensorrt
from lion_ros.runtime.engine_base import EngineRuntime, HostOrDevice, limit_prompt_tokens
from lion_ros.runtime.pipeline import DEFAULT_RUNTIME_CONFIG, RuntimeConfig

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
# numpy has no bfloat16: pycuda buffers of it are raw 16-bit words, never read on the host.
NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16,
                 "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class _TorchMemory:
    """Device arrays as torch CUDA tensors, work ordered on torch's current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_device = device

    @property
    def stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def empty(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        return torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        return torch.zeros(shape, dtype=TORCH_DTYPES[dtype], device=self.device)

    def to_device(self, value: HostOrDevice, dtype: str) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        return value.to(self.device, TORCH_DTYPES[dtype]).contiguous()

    @staticmethod
    def pointer(array: torch.Tensor) -> int:
        return array.data_ptr()

    @staticmethod
    def shape(array: torch.Tensor) -> tuple[int, ...]:
        return tuple(array.shape)

    def to_step_device(self, array: torch.Tensor) -> torch.Tensor:
        return array.float()

    def synchronize(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()


class _PyCudaMemory:
    """Device arrays as pycuda GPUArrays in the primary context; the search runs on the CPU."""

    def __init__(self, device_index: int = 0) -> None:
        try:
            import pycuda.driver as cuda
            import pycuda.gpuarray as gpuarray
        except ImportError as exc:
            raise RuntimeError("the tensorrt backend needs a CUDA build of torch or pycuda for device memory") from exc
        cuda.init()
        # The primary context is the one the CUDA runtime (and so TensorRT) uses; pycuda.autoinit
        # would create a second context whose pointers TensorRT cannot use.
        self.context = cuda.Device(device_index).retain_primary_context()
        self.context.push()
        self.gpuarray = gpuarray
        self._stream = cuda.Stream()
        self.step_device = torch.device("cpu")

    @property
    def stream(self) -> int:
        return self._stream.handle

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.gpuarray.empty(shape, NUMPY_STORAGE[dtype])

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.gpuarray.zeros(shape, NUMPY_STORAGE[dtype])

    def to_device(self, value: HostOrDevice, dtype: str) -> Any:
        if isinstance(value, self.gpuarray.GPUArray):
            return value
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return self.gpuarray.to_gpu(np.ascontiguousarray(value, NUMPY_STORAGE[dtype]))

    @staticmethod
    def pointer(array: Any) -> int:
        return int(array.gpudata)

    @staticmethod
    def shape(array: Any) -> tuple[int, ...]:
        return tuple(array.shape)

    def to_step_device(self, array: Any) -> torch.Tensor:
        self._stream.synchronize()
        return torch.from_numpy(array.get()).float()

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self.context.pop()


class _Engine:
    """One deserialised engine, its execution context and its I/O tensor names and dtypes."""

    def __init__(self, trt: Any, engine: Any, name: str, spec: dict[str, Any]) -> None:
        self.name, self.engine = name, engine
        self.inputs, self.outputs, self.dtypes = [], [], {}
        names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.BF16: "bfloat16",
                 trt.DataType.INT64: "int64", trt.DataType.INT32: "int32", trt.DataType.BOOL: "bool"}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            dtype = names.get(engine.get_tensor_dtype(tensor), str(engine.get_tensor_dtype(tensor)))
            expected = {**spec["inputs"], **spec["outputs"]}.get(tensor, {}).get("dtype")
            if dtype != expected:
                raise RuntimeError(f"engine {name}: tensor {tensor} is {dtype}, the export says {expected}")
            self.dtypes[tensor] = dtype
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(tensor)
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name}")


class TensorRTRuntime(EngineRuntime):
    """`LionRuntime` over the TensorRT engines of an engine directory."""

    name = "tensorrt"

    def __init__(
        self,
        engine_dir: Path,
        metadata: EngineMetadata,
        device: str = "cuda",
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
    ) -> None:
        if not device.startswith("cuda"):
            raise ValueError(f"the tensorrt backend runs on a CUDA device, got device {device!r}")
        trt = import_tensorrt()
        if torch.cuda.is_available():
            self._memory: Any = _TorchMemory(torch.device(device))
        else:
            self._memory = _PyCudaMemory(torch.device(device).index or 0)
        self.step_device = self._memory.step_device
        self.profiles = ProfileConfig(**metadata.profiles)
        super().__init__(engine_dir, metadata, limit_prompt_tokens(runtime_config, self.profiles.max_prompt_tokens))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        self._engines: dict[str, _Engine] = {}
        for name, spec in metadata.graphs.items():
            plan = metadata.plan_path(engine_dir, name)
            log.info("loading TensorRT engine %s (%.1f MiB)", name, plan.stat().st_size / 2**20)
            engine = self._trt_runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {plan} (see the TensorRT log above)")
            self._engines[name] = _Engine(trt, engine, name, spec)
        # The engines run one after another on one stream, so one activation buffer serves all.
        scratch_bytes = max(e.engine.device_memory_size_v2 for e in self._engines.values())
        self._scratch = self._memory.empty((max(scratch_bytes, 1),), "bool")  # one byte per element
        for engine in self._engines.values():
            engine.context.set_device_memory(self._memory.pointer(self._scratch), scratch_bytes)
        log.info("TensorRT engines ready: %s, shared activation memory %.1f MiB", ", ".join(self._engines),
                 scratch_bytes / 2**20)

    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        device: str = "cuda",
        precision: Optional[str] = None,
        *,
        engine_dir: Union[str, Path, None] = None,
        profiles: Optional[ProfileConfig] = None,
        rebuild_on_mismatch: bool = False,
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
    ) -> "TensorRTRuntime":
        """From an engine directory (`lion-build-engines`) or a model directory.

        precision: "bf16", "fp16" (float16 T5 with float32 residual stream, for GPUs or TensorRT
        builds without bf16) or "fp32", or the node's names: "mixed" = bf16, "auto"/None = what
        an engine directory holds, bf16 for a model directory.

        A model directory gets engines built on first use (bf16 unless `precision` says
        otherwise; this takes minutes) in `engine_dir`, default $LION_ENGINE_CACHE or
        ~/.cache/lion_ros/engines. An engine directory built for another TensorRT, GPU, precision,
        profile set or weights raises `EngineMismatchError` naming every difference, before any
        plan is deserialised, unless `rebuild_on_mismatch`.
        """
        directory, metadata = cls._open(
            path, backend="tensorrt", precision=precision, default_precision="bf16", profiles=profiles,
            engine_dir=engine_dir, rebuild_on_mismatch=rebuild_on_mismatch,
        )
        return cls(directory, metadata, device, runtime_config)

    # -- EngineRuntime ---------------------------------------------------------------------------

    def _run(self, graph: str, inputs: dict[str, Any]) -> dict[str, Any]:
        engine, memory = self._engines[graph], self._memory
        context = engine.context
        bound = []  # keeps converted inputs alive until the engine has read them
        for name in engine.inputs:
            array = memory.to_device(inputs[name], engine.dtypes[name])
            bound.append(array)
            if not context.set_input_shape(name, memory.shape(array)):
                raise ValueError(f"{graph}: input {name} of shape {memory.shape(array)} is outside the engine's "
                                 f"profile; rebuild with larger limits (lion-build-engines --help)")
            context.set_tensor_address(name, memory.pointer(array))
        outputs = {}
        for name in engine.outputs:
            array = memory.empty(tuple(context.get_tensor_shape(name)), engine.dtypes[name])
            context.set_tensor_address(name, memory.pointer(array))
            outputs[name] = array
        if not context.execute_async_v3(memory.stream):
            raise RuntimeError(f"TensorRT failed to run {graph}")
        return outputs

    def _array(self, value: HostOrDevice) -> HostOrDevice:
        # Uploaded in _run, where the engine says which dtype each input has.
        return value

    def _zeros(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self._memory.zeros(shape, dtype)

    def _logits(self, value: Any) -> torch.Tensor:
        return self._memory.to_step_device(value)

    def _shape(self, value: Any) -> tuple[int, ...]:
        return self._memory.shape(value)

    def _synchronize(self) -> None:
        self._memory.synchronize()

    def _check_decoder_shape(self, rows: int, max_new_tokens: int) -> None:
        limits = self.profiles
        if max_new_tokens > limits.max_new_tokens or rows > limits.max_batch * limits.max_beams:
            raise ValueError(
                f"the engines were built for at most {limits.max_new_tokens} new tokens and "
                f"{limits.max_batch} x {limits.max_beams} beams; asked for {max_new_tokens} tokens and {rows} rows "
                "(rebuild with lion-build-engines --max-new-tokens / --max-beams)"
            )
