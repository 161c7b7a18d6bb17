"""CUDA graphs for the TensorRT decoder step: `lion_ros.runtime.tensorrt._GraphedDecoderStep`.

CPU part: this machine has neither CUDA nor TensorRT, so stand-ins replace exactly the two things
that need them. `FakeContext` stands in for a TensorRT execution context: it runs a toy decoder
step on CPU tensors that it finds by the addresses bound to it. `FakeCapture` stands in for CUDA
stream capture: it records the enqueue with the addresses bound at that moment and replays that
record, as a CUDA graph replays its kernels with their baked-in addresses. Everything else is the
real code: shape buckets, static buffers, the two K/V buffer sets, per-answer copies, the least
recently used limit and the fall-back.

GPU part (marked gpu): the real thing, TensorRT engines of a tiny random model run with torch CUDA
graphs against the same engines without; skipped, with the reason, where CUDA or TensorRT is
missing (every development and CI machine of this project so far).
"""
from __future__ import annotations

import logging
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_lion import rgb_image

from lion_ros.api import TaskKind
from lion_ros.export.engines import ProfileConfig, tensorrt_available
from lion_ros.model.generation import GenerationSettings, decode
from lion_ros.runtime.tensorrt import _Engine, _GraphedDecoderStep, _TorchMemory

INPUTS = ["token_ids", "position", "self_k", "self_v", "cache_rows", "cross_k", "cross_v", "encoder_mask",
          "task_index"]
OUTPUTS = ["logits", "present_k", "present_v"]
DTYPES = {**dict.fromkeys(INPUTS, "int64"),
          **dict.fromkeys(["self_k", "self_v", "cross_k", "cross_v", *OUTPUTS], "float32")}
MAX_ROWS = 4  # the stand-in engine's profile limit
STREAM = 7  # any handle: nothing runs on it here


def toy_step(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A decoder step with the real graph's interface whose outputs depend on every input."""
    k = x["self_k"].index_select(1, x["cache_rows"])
    v = x["self_v"].index_select(1, x["cache_rows"])
    position = int(x["position"][0])
    k[:, :, :, position] = (x["token_ids"].float() + x["cross_k"].sum())[None, :, None, None]
    v[:, :, :, position] = (x["task_index"].float() + x["cross_v"].sum() + x["encoder_mask"].sum())[None, :, None, None]
    return {"logits": (k + 2 * v).sum((0, 2, 4)), "present_k": k, "present_v": v}  # logits [N, T]


class FakeMemory(_TorchMemory):
    """`_TorchMemory` on the CPU, remembering what it allocated so that addresses can be resolved."""

    stream = STREAM

    def __init__(self) -> None:  # no CUDA stream on the CPU
        self.device = self.step_device = torch.device("cpu")
        self.arrays: dict[int, torch.Tensor] = {}

    def empty(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        array = super().empty(shape, dtype)
        self.arrays[array.data_ptr()] = array
        return array

    def synchronize(self) -> None:
        pass


class FakeCapture:
    """Stands in for CUDA stream capture (see the module docstring)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.capturing = fail, False
        self.recorded: Callable[[], None] | None = None
        self.captures = self.replays = 0

    def capture(self, enqueue: Callable[[int], bool]) -> Callable[[], None]:
        self.capturing = True
        try:
            captured = enqueue(STREAM)
        finally:
            self.capturing = False
        if self.fail or not captured:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        launch = self.recorded

        def replay() -> None:
            self.replays += 1
            launch()

        return replay


class FakeContext:
    """Stands in for a TensorRT execution context running `toy_step` (see the module docstring)."""

    def __init__(self, memory: FakeMemory, capture: FakeCapture) -> None:
        self.memory, self.capture = memory, capture
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if name == "token_ids" and shape[0] > MAX_ROWS:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "logits":
            return self.shapes["token_ids"][0], self.shapes["self_k"][3]
        return self.shapes["self_k"]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert stream == STREAM
        bound = {name: self.memory.arrays[address] for name, address in self.addresses.items()}

        def launch() -> None:
            for name, value in toy_step({name: bound[name] for name in INPUTS}).items():
                bound[name].copy_(value)

        if self.capture.capturing:
            self.capture.recorded = launch
        else:
            self.runs += 1
            launch()
        return True


class FakeEngine:
    """The parts of `_Engine` that the graphed step uses, with `FakeContext`s."""

    name, inputs, outputs, dtypes = "t5_decoder_step", INPUTS, OUTPUTS, DTYPES

    def __init__(self, memory: FakeMemory, capture: FakeCapture) -> None:
        self.memory, self.capture = memory, capture
        self.contexts: list[FakeContext] = []

    def new_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self.memory, self.capture))
        return self.contexts[-1]


def graphed(fail: bool = False, max_buckets: int = 4, length_step: int = 1,
            max_encoder_length: int | None = None) -> tuple[_GraphedDecoderStep, FakeCapture, FakeEngine]:
    """A graphed step over the stand-ins; by default without encoder-length padding, so bucket
    keys show the exact lengths."""
    memory, capture = FakeMemory(), FakeCapture(fail)
    engine = FakeEngine(memory, capture)
    step = _GraphedDecoderStep(engine, memory, capture, max_buckets, length_step, max_encoder_length)  # type: ignore[arg-type]
    return step, capture, engine


def encoder_outputs(seed: int, rows: int = 2, length: int = 5) -> dict[str, torch.Tensor]:
    # Small integers: the toy step's sums are then exact in any order, so a padded bucket (zeros
    # added) can be compared exactly with the unpadded step.
    generator = torch.Generator().manual_seed(seed)
    return {
        "cross_k": torch.randint(-8, 9, (2, 1, 1, length, 3), generator=generator).float(),
        "cross_v": torch.randint(-8, 9, (2, 1, 1, length, 3), generator=generator).float(),
        "encoder_mask": torch.ones(1, length, dtype=torch.long),
        "task_index": torch.ones(rows, dtype=torch.long),
    }


def answer(step: Callable[[dict[str, Any]], dict[str, Any] | None], seed: int, rows: int = 2, length: int = 5,
           steps: int = 6) -> list[torch.Tensor]:
    """The logits of `steps` decoder steps, fed back as `EngineDecoderStep` does, beams reordered."""
    fixed = encoder_outputs(seed, rows, length)
    self_k = self_v = torch.zeros(2, rows, 1, steps, 3)
    cache_rows = torch.arange(rows)
    logits = []
    for t in range(steps):
        inputs = {"token_ids": torch.arange(rows) + 10 * t, "position": torch.tensor([t]), "self_k": self_k,
                  "self_v": self_v, "cache_rows": cache_rows, **fixed}
        outputs = step(inputs)
        if outputs is None:  # graphs off: what TensorRTRuntime._run then does
            outputs = toy_step(inputs)
        self_k, self_v = outputs["present_k"], outputs["present_v"]
        logits.append(outputs["logits"].clone())
        cache_rows = torch.arange(rows).flip(0) if t % 2 else torch.arange(rows)  # a beam reorder
    return logits


def assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_graphed_steps_give_the_plain_results() -> None:
    step, capture, engine = graphed()
    assert_same(answer(step.run, seed=0), answer(toy_step, seed=0))
    # Both K/V buffer sets were captured at their first step (which ran normally), then replayed.
    assert capture.captures == 2 and capture.replays == 4
    assert [context.runs for context in engine.contexts] == [1, 1]


def test_a_new_shape_is_a_new_bucket_and_a_repeated_one_replays() -> None:
    step, capture, _ = graphed()
    answer(step.run, seed=0, length=5)
    assert_same(answer(step.run, seed=1, length=9), answer(toy_step, seed=1, length=9))
    assert len(step.buckets) == 2 and capture.captures == 4
    assert_same(answer(step.run, seed=2, length=5), answer(toy_step, seed=2, length=5))
    assert capture.captures == 4  # same shapes, other values: replayed only
    # A bucket is the tuple of input shapes, in the engine's input order.
    assert ((2,), (1,), (2, 2, 1, 6, 3), (2, 2, 1, 6, 3), (2,), (2, 1, 1, 9, 3), (2, 1, 1, 9, 3), (1, 9),
            (2,)) in step.buckets
    answer(step.run, seed=3, rows=3)  # more rows: another bucket
    answer(step.run, seed=3, steps=4)  # shorter K/V buffers: another bucket
    assert len(step.buckets) == 4 and capture.captures == 8


def test_per_answer_inputs_are_copied_once_per_answer() -> None:
    step, _, _ = graphed()
    fixed = encoder_outputs(0)
    inputs = {"token_ids": torch.arange(2), "position": torch.tensor([0]), "self_k": torch.zeros(2, 2, 1, 6, 3),
              "self_v": torch.zeros(2, 2, 1, 6, 3), "cache_rows": torch.arange(2), **fixed}
    first = step.run(inputs)
    assert first is not None
    bucket = next(iter(step.buckets.values()))
    torch.testing.assert_close(bucket.inputs["cross_k"], fixed["cross_k"])
    bucket.inputs["cross_k"].zero_()  # the same object again is not copied again ...
    step.run({**inputs, "self_k": first["present_k"], "self_v": first["present_v"], "position": torch.tensor([1])})
    assert bucket.inputs["cross_k"].abs().sum() == 0
    other = fixed["cross_k"] + 1  # ... another object (the next answer's) is
    step.run({**inputs, "cross_k": other})
    torch.testing.assert_close(bucket.inputs["cross_k"], other)


def test_encoder_lengths_are_padded_into_a_few_buckets() -> None:
    step, capture, _ = graphed(length_step=8, max_encoder_length=12)
    for seed, length in enumerate([5, 6, 8, 3]):  # all padded to 8: one bucket, captured once
        assert_same(answer(step.run, seed=seed, length=length), answer(toy_step, seed=seed, length=length))
    assert len(step.buckets) == 1 and capture.captures == 2
    assert next(iter(step.buckets))[5][3] == 8
    for seed, length in enumerate([9, 11, 12]):  # 16 is beyond the profile: padded to its 12
        assert_same(answer(step.run, seed=seed, length=length), answer(toy_step, seed=seed, length=length))
    assert sorted(key[5][3] for key in step.buckets) == [8, 12] and capture.captures == 4
    bucket = step.buckets[next(key for key in step.buckets if key[5][3] == 12)]
    assert bucket.inputs["encoder_mask"].sum() == 12  # the last answer filled it; shorter ones leave zeros
    answer(step.run, seed=0, length=10)
    assert bucket.inputs["encoder_mask"].sum() == 10 and bucket.inputs["cross_k"][..., 10:, :].abs().sum() == 0


def test_least_recently_used_bucket_goes_first() -> None:
    step, capture, _ = graphed(max_buckets=2)
    answer(step.run, seed=0, length=5)
    answer(step.run, seed=0, length=6)
    answer(step.run, seed=0, length=5)  # 5 is now the most recently used
    answer(step.run, seed=0, length=7)  # evicts 6
    assert sorted(key[5][3] for key in step.buckets) == [5, 7]
    assert capture.captures == 6
    assert_same(answer(step.run, seed=4, length=6), answer(toy_step, seed=4, length=6))
    assert capture.captures == 8  # 6 was captured again


def test_capture_failure_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    step, _, _ = graphed(fail=True)
    with caplog.at_level(logging.WARNING, logger="lion_ros.runtime.tensorrt"):
        results = answer(step.run, seed=0)
        answer(step.run, seed=1, length=9)
    assert_same(results, answer(toy_step, seed=0))
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runs without them" in warnings[0].getMessage()
    assert not step.enabled and not step.buckets


def test_shapes_outside_the_profile_still_raise() -> None:
    step, _, _ = graphed()
    with pytest.raises(ValueError, match="outside the engine's profile"):
        answer(step.run, seed=0, rows=MAX_ROWS + 1)
    assert step.enabled  # a request error, not a reason to give up on graphs


def test_every_context_runs_in_the_shared_activation_buffer() -> None:
    """Graph contexts are made after the runtime's scratch buffer and get its (fixed) address."""
    made: list[Any] = []

    class Context:
        def set_device_memory(self, address: int, size: int) -> None:
            self.memory = (address, size)

    def create_execution_context(strategy: str) -> Context:
        assert strategy == "user-managed"
        made.append(Context())
        return made[-1]

    trt = types.SimpleNamespace(
        ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="user-managed"),
        DataType=types.SimpleNamespace(FLOAT=0, HALF=1, BF16=2, INT64=3, INT32=4, BOOL=5),
        TensorIOMode=types.SimpleNamespace(INPUT=0, OUTPUT=1),
    )
    plan = types.SimpleNamespace(num_io_tensors=1, get_tensor_name=lambda i: "logits",
                                 get_tensor_dtype=lambda name: 0, get_tensor_mode=lambda name: 1,
                                 create_execution_context=create_execution_context)
    engine = _Engine(trt, plan, "t5_decoder_step", {"inputs": {}, "outputs": {"logits": {"dtype": "float32"}}},
                     scratch=0x7000, scratch_bytes=4096)
    engine.new_context()
    engine.new_context()
    assert [context.memory for context in made] == [(0x7000, 4096)] * 3


def test_pycuda_context_is_made_current_in_the_thread_that_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node builds the runtime on one thread and answers on its worker thread: the pycuda path
    must push its context in the computing thread, for the duration of the work, and release its
    retain on close. pycuda is not installed here; the stand-in records the driver calls."""
    import sys
    import threading

    from lion_ros.runtime.tensorrt import _PyCudaMemory

    calls: list[tuple[str, str]] = []

    class Context:
        def push(self) -> None:
            calls.append(("push", threading.current_thread().name))

        @staticmethod
        def pop() -> None:
            calls.append(("pop", threading.current_thread().name))

        def detach(self) -> None:
            calls.append(("detach", threading.current_thread().name))

    class Stream:
        def synchronize(self) -> None:
            calls.append(("synchronize", threading.current_thread().name))

    driver = types.SimpleNamespace(init=lambda: None, Stream=Stream,
                                   Device=lambda index: types.SimpleNamespace(retain_primary_context=Context))
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver, gpuarray=None))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.gpuarray", types.SimpleNamespace())
    memory = _PyCudaMemory(device_index=1)
    assert calls == [("push", "MainThread"), ("pop", "MainThread")]  # the stream is made in the context
    calls.clear()

    def work() -> None:
        with memory.scope():
            calls.append(("work", threading.current_thread().name))

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    worker.join()
    assert calls == [("push", "worker"), ("work", "worker"), ("pop", "worker")]
    calls.clear()
    memory.close()
    assert [call for call, _ in calls] == ["push", "synchronize", "pop", "detach"]


# -- on a GPU with TensorRT ------------------------------------------------------------------------

GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA graphs need a GPU"),
    pytest.mark.skipif(not tensorrt_available(), reason="TensorRT 10+ is not importable here (optional dependency)"),
]
PROFILES = ProfileConfig(max_batch=1, max_beams=3, max_new_tokens=16, max_prompt_tokens=128)
QUESTIONS = ["where is the red cup?", "what is on the left of the chair next to the small table?"]


def on_gpu(test: Callable[..., None]) -> Callable[..., None]:
    for mark in GPU_MARKS:
        test = mark(test)
    return test


class CountingCapture:
    """The real capture, counted."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.captures = inner, 0

    def capture(self, enqueue: Callable[[int], bool]) -> Callable[[], None]:
        self.captures += 1
        return self.inner.capture(enqueue)


class RefusingCapture:
    def capture(self, enqueue: Callable[[int], bool]) -> Callable[[], None]:
        raise RuntimeError("refused for the test")


@pytest.fixture(scope="module")
def engine_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    directory = tmp_path_factory.mktemp("graph-engines") / "fp32"
    TensorRTRuntime.from_pretrained(model_dir, precision="fp32", profiles=PROFILES, engine_dir=directory)
    return directory


def _tokens(runtime: Any, question: str, beams: int, seed: int) -> list[int]:
    image = runtime.encode_image(rgb_image(seed=seed))
    with runtime._device_scope():  # as answer() runs them: on the runtime's device and stream
        states, mask = runtime._prefill(image.features, runtime.encode_prompt(question), TaskKind.REGION)
        config = GenerationSettings(max_new_tokens=12, num_beams=beams)
        return decode(None, states, mask, torch.tensor([0]), config, step=runtime._decoder_step()).tokens(0)


@on_gpu
@pytest.mark.parametrize("beams", [1, 3])
def test_cuda_graphs_give_the_plain_token_ids(engine_dir: Path, beams: int) -> None:
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    plain = TensorRTRuntime.from_pretrained(engine_dir, cuda_graphs=False)
    runtime = TensorRTRuntime.from_pretrained(engine_dir)
    graphs = runtime._decoder_graphs
    assert plain._decoder_graphs is None and graphs is not None
    graphs.graphs = counting = CountingCapture(graphs.graphs)
    for question in QUESTIONS:
        for seed in range(2):
            assert _tokens(runtime, question, beams, seed) == _tokens(plain, question, beams, seed)
    assert graphs.enabled, "CUDA graph capture failed on this GPU: see the warning in the log"
    # Both prompts (under 64 encoder positions on lion-tiny) are padded into one bucket.
    assert counting.captures > 0 and len(graphs.buckets) == 1

    captured = {key: list(bucket.graphs) for key, bucket in graphs.buckets.items()}
    assert _tokens(runtime, QUESTIONS[0], beams, seed=5) == _tokens(plain, QUESTIONS[0], beams, seed=5)
    assert graphs.buckets.keys() == captured.keys()  # a repeated shape: the same bucket, its graphs replayed
    for key, before in captured.items():
        assert all(graph is None or graph is after for graph, after in zip(before, graphs.buckets[key].graphs))


@on_gpu
def test_capture_failure_on_gpu_falls_back(engine_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lion_ros.runtime.tensorrt import TensorRTRuntime

    plain = TensorRTRuntime.from_pretrained(engine_dir, cuda_graphs=False)
    runtime = TensorRTRuntime.from_pretrained(engine_dir)
    runtime._decoder_graphs.graphs = RefusingCapture()
    with caplog.at_level(logging.WARNING, logger="lion_ros.runtime.tensorrt"):
        for seed in range(2):
            assert _tokens(runtime, QUESTIONS[0], 3, seed) == _tokens(plain, QUESTIONS[0], 3, seed)
    assert sum("runs without them" in record.getMessage() for record in caplog.records) == 1
    assert not runtime._decoder_graphs.enabled
