"""The TensorRT backend (TensorRT 10+ "V3" API): the four engines of an engine directory on one GPU.

    engine I/O      set_input_shape / set_tensor_address per call, execute_async_v3 on one stream
    activations     one scratch buffer shared by all engines (they never run concurrently), given
                    to every execution context (ExecutionContextAllocationStrategy.USER_MANAGED)
    device arrays   torch CUDA tensors where torch has CUDA (the search loops then stay on the
                    GPU and only EOS checks sync); otherwise pycuda arrays in the device's primary
                    context (the one the CUDA runtime and TensorRT use), with the search on the CPU
    decoder step    replayed from one CUDA graph per input-shape bucket where torch has CUDA
                    (`_GraphedDecoderStep`, option `cuda_graphs`); the pycuda path runs it directly
    checks          engine metadata (TensorRT version, GPU, compute capability, profiles, source)
                    is compared before any plan is deserialised: see lion_ros.export.engines

tensorrt is imported lazily: this module imports everywhere, and `TensorRTRuntime` raises
`TensorRTUnavailable` with install hints where TensorRT is missing. Written against the
documented TensorRT 10 Python API; see docs/deployment.md for what was executed where.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

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
    """Device arrays as torch CUDA tensors, all work ordered on the runtime's own stream (the
    legacy default stream would make TensorRT add device-wide synchronisations)."""

    def __init__(self, device: torch.device) -> None:
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.step_device = device
        self.cuda_stream = torch.cuda.Stream(device)

    @property
    def stream(self) -> int:
        return self.cuda_stream.cuda_stream

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The runtime's device and stream, current in the calling thread: TensorRT deserialises
        and runs on the current device, and torch's copies must be ordered with the engines."""
        with torch.cuda.device(self.device), torch.cuda.stream(self.cuda_stream):
            yield

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
        self.cuda_stream.synchronize()

    def close(self) -> None:
        self.synchronize()
        torch.cuda.empty_cache()


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
        self.gpuarray = gpuarray
        with self.scope():
            self._stream = cuda.Stream()
        self.step_device = torch.device("cpu")

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The context current in the calling thread, for as long as the work runs. A context is
        current per thread, and the node builds the runtime on one thread and answers on another:
        driver-API calls there would fail with "invalid device context"."""
        self.context.push()
        try:
            yield
        finally:
            self.context.pop()

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
        with self.scope():
            self._stream.synchronize()
        self.context.detach()  # releases this retain of the primary context


def _set_input_shape(graph: str, context: Any, name: str, shape: tuple[int, ...]) -> None:
    if not context.set_input_shape(name, shape):
        raise ValueError(f"{graph}: input {name} of shape {shape} is outside the engine's profile; rebuild with "
                         "larger limits (lion-build-engines --help)")


class _Engine:
    """One deserialised engine, its I/O tensor names and dtypes, and its execution context(s).

    Every context runs in the one activation buffer `scratch` (`scratch_bytes` long) shared by
    all engines of the runtime.
    """

    def __init__(self, trt: Any, engine: Any, name: str, spec: dict[str, Any], scratch: int,
                 scratch_bytes: int) -> None:
        self.name, self.engine = name, engine
        self._user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self._scratch, self._scratch_bytes = scratch, scratch_bytes
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
        self.context = self.new_context()

    def new_context(self) -> Any:
        """An execution context in the shared activation buffer (no memory of its own)."""
        context = self.engine.create_execution_context(self._user_managed)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.name}")
        context.set_device_memory(self._scratch, self._scratch_bytes)
        return context


# The decoder step's self-attention buffers: it reads `self_k`/`self_v` and returns `present_k`/
# `present_v` of the same shape and dtype, which the next step reads.
_KV_BUFFERS = {"present_k": "self_k", "present_v": "self_v"}
# The encoder's outputs: the very same arrays at every step of an answer, copied once per answer.
_PER_ANSWER_INPUTS = ("cross_k", "cross_v", "encoder_mask")
# Shape buckets kept, least recently used dropped first. A bucket keeps its static buffers: for
# LION-4B with 5 beams and 64 new tokens about 200 MiB (4 K/V buffers, a copy of the
# cross-attention K/V). The cap bounds that memory; a dropped bucket is captured again when needed.
MAX_DECODER_GRAPH_BUCKETS = 4
# The encoder length (visual tokens + prompt) varies with every question: it is padded up to a
# multiple of this (masked keys, weight exactly 0), so varied questions share a few buckets
# instead of churning through captures.
ENCODER_LENGTH_STEP = 64
# Axis of the encoder length in each per-answer input.
_ENCODER_AXIS = {"cross_k": 3, "cross_v": 3, "encoder_mask": 1}


class _GraphCapture(Protocol):
    """Records the work a function enqueues on a stream into a CUDA graph."""

    def capture(self, enqueue: Callable[[int], bool]) -> Callable[[], None]:
        """Capture `enqueue(stream handle)` (False: it failed) into a graph; return its replay
        function, which runs on the caller's current stream. RuntimeError if it cannot be captured."""


class _TorchGraphCapture:
    """`_GraphCapture` with torch.cuda.CUDAGraph, on the stream the step ran on uncaptured: the
    first (warm-up) run of a shape and its capture see the same stream."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self._stream = stream

    def capture(self, enqueue: Callable[[int], bool]) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        # The stream context (entered first, left last) restores the caller's stream even when
        # capture_end raises (the exit of torch.cuda.graph then skips restoring it). "thread_local":
        # CUDA calls made by other threads of the process do not invalidate the capture;
        # TensorRT's, in this thread, do.
        with (
            torch.cuda.stream(self._stream),
            torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"),
        ):
            captured = enqueue(self._stream.cuda_stream)
        if not captured:
            # TensorRT returns False when it cannot enqueue under capture; the graph may be partial.
            raise RuntimeError("execute_async_v3 failed under stream capture")
        return graph.replay


class _DecoderBucket:
    """Static buffers, execution contexts and CUDA graphs of one decoder input-shape bucket.

    A step reads its K/V buffers and writes updated ones that the next step reads. Two buffer
    sets and two graphs, set 0 -> set 1 and set 1 -> set 0 ("parity" 0 and 1), let a step read
    the previous step's output where it is, instead of copying the K/V buffers every step. Each
    graph has its own context, set up once with the bucket's shapes and addresses, so no context
    changes after a graph was captured from it. Outputs other than K/V have one buffer for both.
    """

    def __init__(self, engine: _Engine, memory: _TorchMemory, shapes: dict[str, tuple[int, ...]]) -> None:
        self.contexts = [engine.new_context(), engine.new_context()]
        for context in self.contexts:
            for name, shape in shapes.items():
                _set_input_shape(engine.name, context, name, shape)
        output_shapes = {name: tuple(self.contexts[0].get_tensor_shape(name)) for name in engine.outputs}
        for output, kv in _KV_BUFFERS.items():
            if (output_shapes[output], engine.dtypes[output]) != (shapes[kv], engine.dtypes[kv]):
                raise RuntimeError(f"{engine.name}: {output} {output_shapes[output]} {engine.dtypes[output]} does "
                                   f"not match {kv} {shapes[kv]} {engine.dtypes[kv]}, so it cannot be fed back")
        kv_names = tuple(_KV_BUFFERS.values())
        self.inputs = {name: memory.empty(shape, engine.dtypes[name])
                       for name, shape in shapes.items() if name not in kv_names}
        self.kv = [{name: memory.empty(shapes[name], engine.dtypes[name]) for name in kv_names} for _ in range(2)]
        self.outputs = {name: memory.empty(output_shapes[name], engine.dtypes[name])
                        for name in engine.outputs if name not in _KV_BUFFERS}
        for parity, context in enumerate(self.contexts):
            for name, array in {**self.inputs, **self.kv[parity], **self.results(parity)}.items():
                context.set_tensor_address(name, memory.pointer(array))
        self.graphs: list[Callable[[], None] | None] = [None, None]
        # The per-answer inputs now in the static buffers, by weak reference: while the object
        # lives its memory is not reused, so the same object means the same data.
        self._loaded: dict[str, weakref.ref] = {}

    @property
    def nbytes(self) -> int:
        arrays = [*self.inputs.values(), *self.kv[0].values(), *self.kv[1].values(), *self.outputs.values()]
        return sum(array.nbytes for array in arrays)

    def results(self, parity: int) -> dict[str, torch.Tensor]:
        """The output buffers of the graph that reads K/V set `parity`."""
        return {**self.outputs, **{output: self.kv[1 - parity][kv] for output, kv in _KV_BUFFERS.items()}}

    def load(self, inputs: dict[str, Any]) -> int:
        """Copy a step's inputs into the static buffers; return the parity of the K/V set it reads."""
        parity = next((p for p, kv in enumerate(self.kv) if all(inputs[name] is kv[name] for name in kv)), None)
        if parity is None:  # the first step of an answer: K/V buffers of its own
            parity = 0
            for name, buffer in self.kv[0].items():
                buffer.copy_(torch.as_tensor(inputs[name]))
        for name, buffer in self.inputs.items():
            value = inputs[name]
            if name in _PER_ANSWER_INPUTS:
                loaded = self._loaded.get(name)
                if loaded is not None and loaded() is value:
                    continue
                self._loaded[name] = weakref.ref(value)
                value = torch.as_tensor(value)
                axis = _ENCODER_AXIS[name]
                if value.shape[axis] < buffer.shape[axis]:  # padded bucket: zero K/V, mask 0
                    buffer.zero_()
                    buffer = buffer.narrow(axis, 0, value.shape[axis])
            buffer.copy_(torch.as_tensor(value))
        return parity


class _GraphedDecoderStep:
    """The `t5_decoder_step` engine replayed from one CUDA graph per input-shape bucket.

    Within an answer the step's input shapes never change (fixed-size K/V buffers, the position
    as an input), so a bucket, the tuple of input shapes (rows, encoder length padded to a
    multiple of `length_step` up to `max_encoder_length`, max new tokens), serves every step of
    every answer of that shape. A graph bakes in shapes and all tensor
    addresses, so a bucket has static buffers that each step's inputs are copied into
    (`_DecoderBucket`), and the shared activation buffer must never move (see TensorRTRuntime).
    TensorRT does shape-dependent setup in the first enqueue after the shapes are set, which must
    not happen under capture: so the first step of a graph runs normally (that is the step's
    result) and the capture follows; later steps replay.

    `run` returns None once graphs are off: after any failure to set up or capture a graph (an
    engine that cannot be captured for one shape cannot for others), logged once; the caller
    then runs the step, and every later one, with plain execute_async_v3.
    """

    def __init__(self, engine: _Engine, memory: _TorchMemory, graphs: _GraphCapture,
                 max_buckets: int = MAX_DECODER_GRAPH_BUCKETS, length_step: int = ENCODER_LENGTH_STEP,
                 max_encoder_length: int | None = None) -> None:
        self.engine, self.memory, self.graphs, self.max_buckets = engine, memory, graphs, max_buckets
        self.length_step, self.max_encoder_length = length_step, max_encoder_length
        self.buckets: dict[tuple[tuple[int, ...], ...], _DecoderBucket] = {}  # least recently used first
        self.enabled = True

    def run(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The step's outputs, or None with graphs off. The outputs are the bucket's static
        buffers: valid until its next step, which is as long as the search loops use them."""
        if not self.enabled:
            return None
        try:
            return self._run(inputs)
        except RuntimeError as exc:
            log.warning("CUDA graphs for %s failed (%s); it runs without them from now on", self.engine.name, exc)
            self.enabled = False
            self._drop_all()
            return None

    def _run(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        shapes = {name: tuple(inputs[name].shape) for name in self.engine.inputs}
        padded = self._padded_length(shapes["encoder_mask"][-1])
        for name, axis in _ENCODER_AXIS.items():
            shapes[name] = (*shapes[name][:axis], padded, *shapes[name][axis + 1:])
        key = tuple(shapes.values())
        bucket = self.buckets.pop(key, None)
        if bucket is None:
            bucket = self._new_bucket(shapes)
        self.buckets[key] = bucket
        parity = bucket.load(inputs)
        replay = bucket.graphs[parity]
        if replay is not None:
            replay()
        else:
            context = bucket.contexts[parity]
            if not context.execute_async_v3(self.memory.stream):
                raise RuntimeError(f"TensorRT failed to run {self.engine.name}")
            bucket.graphs[parity] = self.graphs.capture(context.execute_async_v3)
        return bucket.results(parity)

    def _padded_length(self, length: int) -> int:
        padded = -(-length // self.length_step) * self.length_step
        if self.max_encoder_length is not None:
            padded = min(padded, self.max_encoder_length)
        return max(padded, length)  # a length beyond the profile is left for TensorRT to refuse

    def _new_bucket(self, shapes: dict[str, tuple[int, ...]]) -> _DecoderBucket:
        if len(self.buckets) >= self.max_buckets:
            self.memory.synchronize()  # contexts and buffers go only when their work is done
            self.buckets.pop(next(iter(self.buckets)))
        bucket = _DecoderBucket(self.engine, self.memory, shapes)
        log.info("%s: CUDA graphs for rows %d, encoder length %d, max new tokens %d (%.1f MiB of static buffers; "
                 "%d of at most %d shapes kept)", self.engine.name, shapes["token_ids"][0], shapes["encoder_mask"][-1],
                 shapes["self_k"][3], bucket.nbytes / 2**20, len(self.buckets) + 1, self.max_buckets)
        return bucket

    def _drop_all(self) -> None:
        self.memory.synchronize()
        self.buckets.clear()


class TensorRTRuntime(EngineRuntime):
    """`LionRuntime` over the TensorRT engines of an engine directory."""

    name = "tensorrt"

    def __init__(
        self,
        engine_dir: Path,
        metadata: EngineMetadata,
        device: str = "cuda",
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
        cuda_graphs: bool = True,
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
        with self._memory.scope():  # deserialised and allocated on the runtime's device
            self._load_engines(trt, engine_dir, metadata, cuda_graphs)

    def _load_engines(self, trt: Any, engine_dir: Path, metadata: EngineMetadata, cuda_graphs: bool) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        plans = {}
        for name in metadata.graphs:
            plan = metadata.plan_path(engine_dir, name)
            log.info("loading TensorRT engine %s (%.1f MiB)", name, plan.stat().st_size / 2**20)
            plans[name] = self._trt_runtime.deserialize_cuda_engine(plan.read_bytes())
            if plans[name] is None:
                raise RuntimeError(f"TensorRT could not deserialise {plan} (see the TensorRT log above)")
        # The engines run one after another on one stream, so one activation buffer serves all.
        # It is allocated before any execution context exists and never replaced: every context,
        # and every CUDA graph captured from one, holds its address. device_memory_size_v2 is the
        # most any shape of the profile needs, so no later shape asks for more.
        scratch_bytes = max(engine.device_memory_size_v2 for engine in plans.values())
        self._scratch = self._memory.empty((max(scratch_bytes, 1),), "bool")  # one byte per element
        self._engines = {name: _Engine(trt, plans[name], name, spec, self._memory.pointer(self._scratch),
                                       scratch_bytes) for name, spec in metadata.graphs.items()}
        log.info("TensorRT engines ready: %s, shared activation memory %.1f MiB", ", ".join(self._engines),
                 scratch_bytes / 2**20)
        self._decoder_graphs: _GraphedDecoderStep | None = None
        if cuda_graphs and isinstance(self._memory, _TorchMemory):
            self._decoder_graphs = _GraphedDecoderStep(
                self._engines["t5_decoder_step"], self._memory, _TorchGraphCapture(self._memory.cuda_stream),
                max_encoder_length=self.profiles.axis_ranges(self.config)["encoder"][2])
        elif cuda_graphs:
            # Not graphed on the pycuda path: it serves machines without a CUDA torch, and its search
            # loops wait for the logits on the host every step anyway, which limits what graphs
            # save; a second capture implementation is not worth writing untested (no GPU here).
            log.info("CUDA graphs need a CUDA build of torch; the decoder step runs without them")

    def close(self) -> None:
        """Release the engines and their device memory (the node calls this on cleanup and
        shutdown); the runtime cannot answer afterwards."""
        with self._compute_lock, self._memory.scope():
            self._memory.synchronize()
            self._decoder_graphs = None
            self._engines, self._scratch, self._trt_runtime = {}, None, None
            gc.collect()  # device arrays and contexts are freed while the context is current
        self._memory.close()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cuda",
        precision: str | None = None,
        *,
        engine_dir: str | Path | None = None,
        profiles: ProfileConfig | None = None,
        rebuild_on_mismatch: bool = False,
        runtime_config: RuntimeConfig = DEFAULT_RUNTIME_CONFIG,
        cuda_graphs: bool = True,
    ) -> TensorRTRuntime:
        """From an engine directory (`lion-build-engines`) or a model directory.

        precision: "bf16", "fp16" (float16 T5 with float32 residual stream, for GPUs or TensorRT
        builds without bf16) or "fp32", or the node's names: "mixed" = bf16, "auto"/None = what
        an engine directory holds, bf16 for a model directory.

        A model directory gets engines built on first use (bf16 unless `precision` says
        otherwise; this takes minutes) in `engine_dir`, default $LION_ENGINE_CACHE or
        ~/.cache/lion_ros/engines. An engine directory built for another TensorRT, GPU, precision,
        profile set or weights raises `EngineMismatchError` naming every difference, before any
        plan is deserialised, unless `rebuild_on_mismatch`.

        cuda_graphs: replay the decoder step from one CUDA graph per input-shape bucket (needs a
        CUDA build of torch; falls back to plain execution, with one warning, where capture fails).
        """
        directory, metadata = cls._open(
            path, backend="tensorrt", precision=precision, default_precision="bf16", profiles=profiles,
            engine_dir=engine_dir, rebuild_on_mismatch=rebuild_on_mismatch,
        )
        return cls(directory, metadata, device, runtime_config, cuda_graphs)

    # -- EngineRuntime ---------------------------------------------------------------------------

    def _device_scope(self) -> contextlib.AbstractContextManager:
        return self._memory.scope()

    def _run(self, graph: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if graph == "t5_decoder_step" and self._decoder_graphs is not None:
            outputs = self._decoder_graphs.run(inputs)
            if outputs is not None:
                return outputs
        engine, memory = self._engines[graph], self._memory
        context = engine.context
        bound = []  # keeps converted inputs alive until the engine has read them
        for name in engine.inputs:
            array = memory.to_device(inputs[name], engine.dtypes[name])
            bound.append(array)
            _set_input_shape(graph, context, name, memory.shape(array))
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
