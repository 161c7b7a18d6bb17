"""ONNX export of the engine set: each graph against the PyTorch model, under ONNX Runtime on the CPU.

Tolerances (max abs difference), fp32 graphs: 1e-4 + 1e-4 x |reference| on every output; the
observed differences are ~1e-6 on lion-tiny and ~5e-5 on the nano logits (summation order).
The reference is `LionModel` itself (encode_image, visual_prefix, encode) and
`generation.T5DecoderStep` for the decoder. All graphs are run at shapes other than the traced
ones (batch 3 vs 2, other prompt, question and buffer lengths, 2 beams vs 3), so a dynamic axis
baked in by the tracer fails here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lion_ros.export.graphs import (
    PRECISIONS,
    PrecisionPlan,
    QFormerGraph,
    T5EncoderGraph,
    T5Precision,
    VisionGraph,
    cast_model,
)
from lion_ros.export.onnx import GRAPH_NAMES, ExportConfig, export_onnx
from lion_ros.model import LionConfig, LionModel
from lion_ros.model.generation import T5DecoderStep

BATCH, BEAMS, STEPS = 3, 2, 6


def random_model(preset: str, mode: str = "all", seed: int = 0) -> LionModel:
    torch.manual_seed(seed)
    model = LionModel(dataclasses.replace(LionConfig.preset(preset), visual_input=mode)).eval()
    with torch.no_grad():  # adapters, routers and aggregator start as zero maps: make them matter
        for name, param in model.named_parameters():
            if ".adapter." in name or "aggregator." in name:
                param.normal_(0.0, 0.2)
    return model


def sessions(directory: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return {
        name: ort.InferenceSession(str(directory / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        for name in GRAPH_NAMES
        if (directory / f"{name}.onnx").exists()
    }


def run(session: ort.InferenceSession, **inputs: np.ndarray) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in names})


def close(actual: np.ndarray, expected: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    np.testing.assert_allclose(actual, expected.float().numpy(), atol=atol, rtol=rtol)


def check_parity(model: LionModel, graphs: dict[str, ort.InferenceSession], atol: float = 1e-4, rtol: float = 1e-4,
                 seed: int = 1) -> None:
    """Every graph against the model, the decoder over STEPS steps with beam reordering."""
    config, language = model.config, model.config.language
    gen = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen)
    qformer_ids = torch.randint(1, config.qformer.vocab_size, (BATCH, 9), generator=gen)
    qformer_mask = torch.ones_like(qformer_ids)
    qformer_mask[1, 4:] = 0
    input_ids = torch.randint(2, language.vocab_size - 1, (BATCH, 11), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5:], input_ids[0, 5:] = 0, language.pad_token_id  # right padding
    input_ids[2, 3] = language.soft_prompt_token_id
    task = torch.tensor([0, 1, 1])
    tol = {"atol": atol, "rtol": rtol}

    with torch.no_grad():
        features = model.encode_image(pixels.to(model.vision_model.embeddings.patch_embedding.weight.dtype))
        names = [o.name for o in graphs["vision"].get_outputs()]
        vision = dict(zip(names, run(graphs["vision"], pixel_values=pixels.numpy())))
        if config.uses_qformer:
            close(vision["qformer_input"], features.qformer_input, **tol)
        if config.uses_aggregator:
            close(vision["aggregator_tokens"], features.aggregator_tokens, **tol)

        prefix = model.visual_prefix(features, qformer_ids, qformer_mask) if config.uses_qformer else \
            model.visual_prefix(features)
        encoder_inputs = dict(vision, input_ids=input_ids.numpy(), attention_mask=attention_mask.numpy(),
                              task_index=task.numpy())
        if config.uses_qformer:
            (qformer_tokens,) = run(graphs["qformer"], qformer_input=vision["qformer_input"],
                                    qformer_input_ids=qformer_ids.numpy(), qformer_attention_mask=qformer_mask.numpy())
            close(qformer_tokens, prefix[:, : config.qformer.num_query_tokens], **tol)
            encoder_inputs["qformer_tokens"] = qformer_tokens

        states, mask = model.encode(prefix, input_ids, attention_mask, task)
        hidden, encoder_mask, cross_k, cross_v = run(graphs["t5_encoder"], **encoder_inputs)
        close(hidden, states, **tol)
        np.testing.assert_array_equal(encoder_mask, mask.numpy())

        step = T5DecoderStep(model)
        cache = step.new_cache(states, mask, STEPS, BEAMS)
        close(cross_k.repeat(BEAMS, axis=1), cache.cross_k, **tol)  # repeat on the batch axis = repeat_interleave
        rows = BATCH * BEAMS
        self_k = np.zeros(cache.self_k.shape, cross_k.dtype)
        self_v = np.zeros_like(self_k)
        tokens = torch.zeros(rows, dtype=torch.long)
        task_rows = task.repeat_interleave(BEAMS)
        for t in range(STEPS):
            order = torch.randperm(rows, generator=gen) if t % 2 else torch.arange(rows)
            cache.reorder(order)
            expected = step(tokens, torch.tensor([t]), cache, task_rows)
            logits, self_k, self_v = run(
                graphs["t5_decoder_step"], token_ids=tokens.numpy(), position=np.array([t]), self_k=self_k,
                self_v=self_v, cache_rows=order.numpy(), cross_k=cross_k, cross_v=cross_v,
                encoder_mask=encoder_mask, task_index=task_rows.numpy(),
            )
            close(logits, expected, **tol)
            close(self_k, cache.self_k, **tol)
            close(self_v, cache.self_v, **tol)
            tokens = expected.argmax(-1)


@pytest.mark.parametrize("mode", ["all", "qformer", "aggregator"])
def test_fp32_graphs_match_pytorch_on_lion_tiny(tmp_path: Path, mode: str) -> None:
    model = random_model("lion-tiny", mode)
    specs = export_onnx(model, tmp_path, ExportConfig(precision="fp32"))
    assert ("qformer" in specs) == model.config.uses_qformer
    assert ("task_index" in specs["t5_decoder_step"].inputs) == (mode == "all")
    check_parity(model, sessions(tmp_path))
    for name in specs:
        assert not _int64_cumsums(tmp_path / f"{name}.onnx"), f"{name}: CumSum on INT64"


def _int64_cumsums(path: Path) -> list[str]:
    """CumSum nodes whose input is INT64: outside the types TensorRT's ONNX parser documents."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]}
    types.update({tensor.name: tensor.data_type for tensor in proto.graph.initializer})
    return [node.name for node in proto.graph.node
            if node.op_type == "CumSum" and types.get(node.input[0]) == onnx.TensorProto.INT64]


def test_fp32_graphs_match_pytorch_on_nano_config_with_external_data(tmp_path: Path) -> None:
    """Nano geometry (random weights); with the threshold at 0 every graph keeps its weights in
    one external file, the layout the real (> 2 GiB) ViT-g and FlanT5-XL graphs get."""
    export_onnx(random_model("lion-nano"), tmp_path, ExportConfig(precision="fp32", external_data_threshold=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{n}.onnx" for n in GRAPH_NAMES] + [f"{n}.onnx.data" for n in GRAPH_NAMES])
    check_parity(random_model("lion-nano"), sessions(tmp_path))


def test_fp16_graphs_stay_close_to_fp32(tmp_path: Path) -> None:
    """ONNX Runtime has CPU kernels for the fp16 graphs: against the fp32 model they must agree to
    float16 rounding (atol 2e-2 + 2e-2 relative)."""
    export_onnx(random_model("lion-tiny"), tmp_path, ExportConfig(precision="fp16"))  # casts its model
    check_parity(random_model("lion-tiny"), sessions(tmp_path), atol=2e-2, rtol=2e-2)


def _initializer_dtypes(path: Path) -> set[str]:
    return {onnx.TensorProto.DataType.Name(t.data_type) for t in onnx.load(str(path)).graph.initializer}


def test_bf16_graphs_are_typed_as_planned(tmp_path: Path) -> None:
    """No CPU kernels for bf16: check the typing instead. Vision weights fp16 (+ fp32 ln_vision
    and aggregator), T5 bf16 (+ fp32 adapters), float32 graph I/O except the bf16 K/V."""
    specs = export_onnx(random_model("lion-tiny"), tmp_path, ExportConfig(precision="bf16"))
    for name in GRAPH_NAMES:
        proto = onnx.load(str(tmp_path / f"{name}.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    assert _initializer_dtypes(tmp_path / "vision.onnx") >= {"FLOAT16", "FLOAT"}
    assert "BFLOAT16" in _initializer_dtypes(tmp_path / "t5_decoder_step.onnx")
    decoder = specs["t5_decoder_step"]
    assert decoder.inputs["self_k"].dtype == "bfloat16" and decoder.outputs["present_k"].dtype == "bfloat16"
    assert decoder.outputs["logits"].dtype == "float32"
    assert specs["t5_encoder"].outputs["encoder_hidden_states"].dtype == "float32"


def _encoder_states(model: LionModel, residual: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    ids = torch.randint(2, 40, (1, 6), generator=gen)
    with torch.no_grad():
        vision = VisionGraph(model)(torch.randn(1, 3, size, size, generator=gen))
        qformer_tokens = QFormerGraph(model)(vision[0], ids[:, :4], torch.ones_like(ids[:, :4]))
        encoder = T5EncoderGraph(model, residual)
        states, *_ = encoder(qformer_tokens, vision[1], ids, torch.ones_like(ids), torch.tensor([1]))
    return states


def test_fp16_plan_survives_activations_beyond_the_fp16_range() -> None:
    """FlanT5's FFN outputs exceed 65504 in float16. The fp16 plan (float32 residual stream,
    RMSNorm and `wo`) stays finite and close to fp32 where a plain float16 T5 overflows.
    Checked on the graph modules in PyTorch (CPU float16); the export of that plan is checked
    against ONNX Runtime above."""

    def overflowing_model() -> LionModel:
        model = random_model("lion-tiny")
        with torch.no_grad():
            for block in model.language_model.encoder.block:
                block.layer[-1].DenseReluDense.wo.weight.mul_(1e5)  # FFN outputs ~1e6
        return model

    reference = _encoder_states(overflowing_model(), torch.float32)
    plan = PRECISIONS["fp16"]
    safe = _encoder_states(cast_model(overflowing_model(), plan), plan.t5.residual)
    naive_t5 = T5Precision(torch.float16, torch.float16, torch.float16, torch.float16, True)
    naive_plan = PrecisionPlan("naive", torch.float16, naive_t5)
    naive = _encoder_states(cast_model(overflowing_model(), naive_plan), torch.float16)
    assert not torch.isfinite(naive).all()  # the premise: plain float16 overflows here
    assert torch.isfinite(safe).all()
    close(safe.numpy(), reference, atol=2e-2, rtol=2e-2)


def test_cast_model_follows_each_plan() -> None:
    model = random_model("lion-tiny")
    cast_model(model, PRECISIONS["fp16"])
    ff = model.language_model.decoder.block[0].layer[-1]
    assert model.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    assert model.vision_model.post_layernorm.weight.dtype == torch.float32
    assert ff.DenseReluDense.wi_0.weight.dtype == torch.float16
    assert ff.DenseReluDense.wo.weight.dtype == torch.float32
    assert ff.layer_norm.weight.dtype == torch.float32
    assert ff.adapter.adapters[0].up_proj.weight.dtype == torch.float32
    assert model.language_model.lm_head.weight is not model.language_model.shared.weight
    cast_model(model, PRECISIONS["bf16"])
    assert ff.DenseReluDense.wo.weight.dtype == torch.bfloat16 and ff.layer_norm.weight.dtype == torch.bfloat16
