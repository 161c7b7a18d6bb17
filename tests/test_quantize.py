"""Weight-only INT8 decoder weights (`lion_ros.export.quantize`, `decoder_weights="int8"`).

Tolerances: on a hand-built graph the int8 output must stay within the worst case of symmetric
per-channel rounding, |x| @ (scale / 2) per output, plus float slack (observed: 0.3 of that
bound, 0.6-0.8 % of the largest output). On the tiny model's decoder step with random K/V inputs
the observed difference is 0.36 on logits up to 22 and 0.05 on K/V up to 4; the test allows 1.5
and 0.2. Greedy answers are compared exactly: over 30 tiny-model prompts the smallest gap between
the two best tokens was 3.2 and the largest logit difference 0.25, so they cannot flip.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_lion import rgb_image

from lion_ros.api import TaskKind
from lion_ros.export import cli
from lion_ros.export.engines import METADATA_NAME, BuildConfig, EngineMetadata, EngineMismatchError, check, prepare
from lion_ros.export.quantize import MIN_ELEMENTS, quantize_weights_int8
from lion_ros.runtime.base import GenerationSettings
from lion_ros.runtime.onnxruntime import OnnxRuntimeRuntime

FP32 = BuildConfig(precision="fp32")
INT8 = dataclasses.replace(FP32, decoder_weights="int8")
DECODER = "t5_decoder_step"


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------
# The transform on a hand-built graph


def _linear_graph(dtype: int, opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [B, 64] -> shared @ twice (one initializer, two MatMuls), Gemm(transB) with a [40, 64]
    weight, and a MatMul with a weight too small to quantize."""
    rng = np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weights = {
        "shared": rng.normal(size=(64, 48)),
        "gemm_b": rng.normal(size=(40, 64)) * np.linspace(0.01, 3.0, 40)[:, None],  # per-channel ranges differ
        "small": rng.normal(size=(64, 8)),
    }
    weights = {name: w.astype(np_type) for name, w in weights.items()}
    nodes = [
        helper.make_node("MatMul", ["x", "shared"], ["y1"]),
        helper.make_node("MatMul", ["x", "shared"], ["y2"]),
        helper.make_node("Gemm", ["x", "gemm_b"], ["y3"], transB=1),
        helper.make_node("MatMul", ["x", "small"], ["y4"]),
    ]
    outputs = [helper.make_tensor_value_info(name, dtype, ["batch", size])
               for name, size in (("y1", 48), ("y2", 48), ("y3", 40), ("y4", 8))]
    graph = helper.make_graph(nodes, "linears", [helper.make_tensor_value_info("x", dtype, ["batch", 64])], outputs,
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model, weights


@pytest.mark.parametrize(("dtype", "opset"), [(TensorProto.FLOAT, 17), (TensorProto.FLOAT16, 17),
                                              (TensorProto.FLOAT16, 19)])
def test_transform_stays_within_the_rounding_bound(dtype: int, opset: int) -> None:
    model, weights = _linear_graph(dtype, opset)
    x = np.random.default_rng(1).normal(size=(5, 64)).astype(helper.tensor_dtype_to_np_dtype(dtype))
    expected = _session(model).run(None, {"x": x})

    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    summary = quantize_weights_int8(quantized)
    onnx.checker.check_model(quantized, full_check=True)

    assert weights["small"].size < MIN_ELEMENTS
    assert summary.weights == 2  # the shared weight once, the Gemm weight, not the small one
    assert summary.bytes_before == weights["shared"].nbytes + weights["gemm_b"].nbytes
    initializers = {t.name: t for t in quantized.graph.initializer}
    assert initializers["small"].data_type == dtype and not {"shared", "gemm_b"} & set(initializers)
    assert sum(t.data_type == TensorProto.INT8 for t in initializers.values()) == 2
    dequantize = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    assert len(dequantize) == 2
    # Float16 scales need opset 19; before that float32 scales and a Cast back to float16.
    casts = [n for n in quantized.graph.node if n.op_type == "Cast"]
    assert len(casts) == (2 if (dtype, opset) == (TensorProto.FLOAT16, 17) else 0)
    scale_type = dtype if opset >= 19 else TensorProto.FLOAT
    assert {initializers[n.input[1]].data_type for n in dequantize.values()} == {scale_type}
    axes = {n.name.split("/")[0]: n.attribute[0].i for n in dequantize.values()}
    assert axes == {"shared": 1, "gemm_b": 0}  # output channels: MatMul's N, Gemm-with-transB's rows

    actual = _session(quantized).run(None, {"x": x})
    x32 = np.abs(x.astype(np.float32))
    for out, ref, weight in zip(actual[:3], expected[:3], (weights["shared"],) * 2 + (weights["gemm_b"].T,)):
        scale = np.abs(weight.astype(np.float32)).max(axis=0) / 127
        bound = x32 @ np.broadcast_to(scale / 2, weight.shape)
        # float16 rounds the products and sums in both graphs: allow 1e-3 of |x| @ |W|.
        slack = 1e-5 if dtype == TensorProto.FLOAT else 1e-3 * (x32 @ np.abs(weight.astype(np.float32)))
        assert np.all(np.abs(out.astype(np.float32) - ref.astype(np.float32)) <= bound + slack)
        assert not np.array_equal(out, ref)  # it did quantize
    np.testing.assert_array_equal(actual[3], expected[3])


def test_float_heads_keep_the_last_projection_float() -> None:
    model, _ = _linear_graph(TensorProto.FLOAT, 17)
    summary = quantize_weights_int8(model, float_heads=["y3"])
    assert summary.weights == 1
    assert "gemm_b" in {t.name for t in model.graph.initializer}
    with pytest.raises(ValueError, match="no MatMul / Gemm leads to 'x'"):
        quantize_weights_int8(model, float_heads=["x"])


# ------------------------------------------------------------------------------------------
# The tiny model exported with decoder_weights="int8"


@pytest.fixture(scope="module")
def engine_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 exports of the tiny model with float and with int8 decoder weights (copy before changing)."""
    root = tmp_path_factory.mktemp("quantize")
    dirs = {"float": root / "float", "int8": root / "int8"}
    prepare(dirs["float"], backend="onnxruntime", model_dir=model_dir, build=FP32)
    prepare(dirs["int8"], backend="onnxruntime", model_dir=model_dir, build=INT8)
    return dirs


def _decoder_inputs(metadata: EngineMetadata) -> dict[str, np.ndarray]:
    """One sample, 3 beams, step 2 of 5, 7 encoder positions (2 masked); random float K/V."""
    sizes = {"rows": 3, "steps": 5, "batch": 1, "encoder": 7}
    integers = {"token_ids": np.array([0, 5, 9]), "position": np.array([2]), "cache_rows": np.array([2, 0, 1]),
                "encoder_mask": np.array([[1, 1, 1, 1, 1, 0, 0]]), "task_index": np.array([0, 1, 1])}
    rng = np.random.default_rng(0)
    inputs = {}
    for name, spec in metadata.graphs[DECODER]["inputs"].items():
        shape = [sizes.get(dim, dim) for dim in spec["shape"]]
        inputs[name] = integers[name] if name in integers else rng.normal(size=shape).astype(spec["dtype"])
    return inputs


def test_int8_decoder_graph_matches_the_float_graph_and_is_smaller(engine_dirs: dict[str, Path]) -> None:
    metadata = {kind: EngineMetadata.load(path) for kind, path in engine_dirs.items()}
    assert metadata["float"].decoder_weights == "float" and metadata["int8"].decoder_weights == "int8"
    paths = {kind: metadata[kind].onnx_path(path, DECODER) for kind, path in engine_dirs.items()}
    inputs = _decoder_inputs(metadata["float"])
    outputs = {kind: _session(path).run(None, inputs) for kind, path in paths.items()}
    (logits, present_k, present_v), (logits8, present_k8, present_v8) = outputs["float"], outputs["int8"]
    assert np.abs(logits).max() > 5  # the tolerance below is small against these
    np.testing.assert_allclose(logits8, logits, atol=1.5)
    np.testing.assert_allclose(present_k8, present_k, atol=0.2)
    np.testing.assert_allclose(present_v8, present_v, atol=0.2)
    assert not np.array_equal(logits8, logits)

    graph = onnx.load(str(paths["int8"])).graph
    # 2 layers x (self q, k, v, o, cross q, o, wi_0, wi_1, wo); the adapters' 8-wide projections
    # are below MIN_ELEMENTS and the LM head stays float.
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) == 18
    assert sum(t.data_type == TensorProto.INT8 for t in graph.initializer) == 18
    lm_head = next(n for n in graph.node if n.op_type == "MatMul" and "lm_head" in n.name)
    assert lm_head.input[1] in {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    # 228 kB -> 160 kB; the float embedding and LM head (33 kB each) are most of what is left.
    assert paths["int8"].stat().st_size < 0.8 * paths["float"].stat().st_size
    for graph_name in ("vision", "qformer", "t5_encoder"):  # only the decoder step changes
        assert (metadata["int8"].onnx_path(engine_dirs["int8"], graph_name).read_bytes()
                == metadata["float"].onnx_path(engine_dirs["float"], graph_name).read_bytes())


# ------------------------------------------------------------------------------------------
# Metadata: mismatches, older directories, the CLI


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the ONNX export ran, but the directory was up to date")

    monkeypatch.setattr("lion_ros.export.onnx.export_onnx", fail)


def test_decoder_weights_mismatch_is_named(engine_dirs: dict[str, Path], tmp_path: Path, no_export: None) -> None:
    engine_dir = Path(shutil.copytree(engine_dirs["int8"], tmp_path / "engines"))
    metadata = EngineMetadata.load(engine_dir)
    export, engines = check(metadata, engine_dir, backend="onnxruntime", precision="fp32", decoder_weights="float",
                            profiles=None, source=None, tensorrt=None)
    assert export == ["decoder_weights: exported as int8, asked for float"] and engines == []
    with pytest.raises(EngineMismatchError, match="decoder_weights: exported as int8, asked for float"):
        prepare(engine_dir, backend="onnxruntime", build=FP32)
    assert prepare(engine_dir, backend="onnxruntime", build=INT8).decoder_weights == "int8"  # up to date
    # Building from an existing export without --decoder-weights keeps what it was exported with.
    assert cli.main(["--out", str(engine_dir), "--precision", "fp32", "--onnx-only"]) == 0
    assert EngineMetadata.load(engine_dir).decoder_weights == "int8"


def test_directories_without_the_field_have_float_decoder_weights(
    engine_dirs: dict[str, Path], tmp_path: Path, no_export: None
) -> None:
    engine_dir = Path(shutil.copytree(engine_dirs["float"], tmp_path / "engines"))
    data = json.loads((engine_dir / METADATA_NAME).read_text())
    del data["decoder_weights"]
    (engine_dir / METADATA_NAME).write_text(json.dumps(data))
    assert EngineMetadata.load(engine_dir).decoder_weights == "float"
    assert prepare(engine_dir, backend="onnxruntime", build=FP32).decoder_weights == "float"


# ------------------------------------------------------------------------------------------
# The onnxruntime backend over an int8 directory


def test_onnxruntime_answers_through_int8_decoder_weights(engine_dirs: dict[str, Path]) -> None:
    reference = OnnxRuntimeRuntime.from_pretrained(engine_dirs["float"], threads=1)
    # Asking for a precision builds a request from the directory: it must keep its decoder weights.
    runtime = OnnxRuntimeRuntime.from_pretrained(engine_dirs["int8"], precision="fp32", threads=1)
    settings = GenerationSettings(num_beams=1, max_new_tokens=12)
    for seed in range(2):
        rgb = rgb_image(seed=seed)
        for question, task in (("where is the red cup?", None), ("What is in the image?", TaskKind.IMAGE)):
            answer = runtime.answer(runtime.encode_image(rgb), question, task=task, settings=settings)
            expected = reference.answer(reference.encode_image(rgb), question, task=task, settings=settings)
            assert answer.text and answer.timings.tokens_generated >= 1
            assert (answer.text, answer.task) == (expected.text, expected.task)
            # Same tokens, so the same boxes; their scores are probabilities from other logits.
            assert [dataclasses.replace(b, score=0.0) for b in answer.boxes] == [
                dataclasses.replace(b, score=0.0) for b in expected.boxes]
