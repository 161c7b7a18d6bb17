"""Export LION to the four ONNX graphs of `graphs.py` (the engine set).

Exporter: torch's TorchScript-based exporter (`dynamo=False`). It needs no extra package
(the dynamo exporter needs `onnxscript`), takes `dynamic_axes` by name, and traces the plain
tensor code of `graphs.py` predictably; every dynamic axis is checked by the parity tests at
shapes other than the ones traced here.

Graphs above the protobuf limit (2 GiB; the real ViT-g and FlanT5-XL halves are) keep their
weights in one external `<graph>.onnx.data` file next to the graph.

`decoder_weights="int8"` stores the decoder step's linear weights, all but the LM head, as int8
with per-channel scales (`quantize.py`), applied to the traced graph before it is saved.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from lion_ros.model.lion import LionModel

from .graphs import (
    PrecisionPlan,
    QFormerGraph,
    T5DecoderStepGraph,
    T5EncoderGraph,
    VisionGraph,
    cast_model,
    precision_plan,
)
from .quantize import quantize_weights_int8

log = logging.getLogger(__name__)

# Bump when the graphs' interface or semantics change; engines record it and are rebuilt.
EXPORT_FORMAT_VERSION = 1
GRAPH_NAMES = ("vision", "qformer", "t5_encoder", "t5_decoder_step")
# "int8": weight-only INT8 linears in t5_decoder_step, the memory-bound graph run once per token.
DECODER_WEIGHTS = ("float", "int8")
PROTOBUF_LIMIT = 2 * 1024**3


def export_code_version() -> str:
    """`<format>+<sha256 of the export code>`: editing the graphs invalidates built engines even
    if someone forgets to bump EXPORT_FORMAT_VERSION."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("graphs.py", "onnx.py", "quantize.py"):
        digest.update((here / name).read_bytes())
    return f"{EXPORT_FORMAT_VERSION}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "fp32"  # a key of graphs.PRECISIONS
    opset: int = 17  # LayerNormalization is a single op from 17 on
    # Above this many bytes of weights a graph stores them externally (protobuf cannot hold 2 GiB).
    external_data_threshold: int = PROTOBUF_LIMIT - 64 * 1024**2
    decoder_weights: str = "float"  # one of DECODER_WEIGHTS

    def __post_init__(self) -> None:
        if self.decoder_weights not in DECODER_WEIGHTS:
            raise ValueError(f"decoder_weights must be one of {', '.join(DECODER_WEIGHTS)}, "
                             f"got {self.decoder_weights!r}")


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # numpy dtype name, "bfloat16" for bfloat16
    shape: list[int | str]  # str = named dynamic axis

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str  # relative to the export directory
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> GraphSpec:
        return cls(
            name=name,
            file=data["file"],
            inputs={k: TensorSpec(**v) for k, v in data["inputs"].items()},
            outputs={k: TensorSpec(**v) for k, v in data["outputs"].items()},
        )


@dataclass
class _Graph:
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]  # sample inputs, in call order
    outputs: list[str]  # a list, not a tuple: torch.onnx.export concatenates it to the input names
    dynamic_axes: dict[str, dict[int, str]]

    def __post_init__(self) -> None:
        # torch.onnx.export restores the wrapper's training flag afterwards, and train() recurses:
        # a wrapper left in training mode would switch the wrapped LionModel's dropout on.
        self.module.eval()


def _sample_graphs(model: LionModel, plan: PrecisionPlan) -> dict[str, _Graph]:
    """Each graph with sample inputs whose dynamic sizes all differ from one another and from 1,
    so the tracer cannot mistake one axis for another or specialise on broadcasting."""
    config, lang = model.config, model.config.language
    batch, beams, question, prompt, steps = 2, 3, 5, 7, 4
    rows = batch * beams
    generator = torch.Generator().manual_seed(0)
    vision = config.vision
    pixel_values = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator)
    with torch.no_grad():
        features = VisionGraph(model)(pixel_values)
    named_features = dict(zip(VisionGraph.output_names(model), features))
    graphs = {
        "vision": _Graph(
            VisionGraph(model),
            {"pixel_values": pixel_values},
            VisionGraph.output_names(model),
            {name: {0: "image_batch"} for name in ["pixel_values", *VisionGraph.output_names(model)]},
        )
    }
    encoder_inputs: dict[str, torch.Tensor] = {}
    if config.uses_qformer:
        ids = torch.randint(1, config.qformer.vocab_size, (batch, question), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        qformer_input = named_features["qformer_input"][:1]  # one frame, a batch of questions
        graphs["qformer"] = _Graph(
            QFormerGraph(model),
            {"qformer_input": qformer_input, "qformer_input_ids": ids, "qformer_attention_mask": mask},
            ["qformer_tokens"],
            {
                "qformer_input": {0: "image_batch"},
                "qformer_input_ids": {0: "batch", 1: "question"},
                "qformer_attention_mask": {0: "batch", 1: "question"},
                "qformer_tokens": {0: "batch"},
            },
        )
        with torch.no_grad():
            encoder_inputs["qformer_tokens"] = QFormerGraph(model)(qformer_input, ids, mask)
    if config.uses_aggregator:
        encoder_inputs["aggregator_tokens"] = named_features["aggregator_tokens"][:1]
    input_ids = torch.randint(2, lang.vocab_size, (batch, prompt), generator=generator)
    input_ids[1, 1] = lang.soft_prompt_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -3:] = 0
    encoder_inputs.update(input_ids=input_ids, attention_mask=attention_mask)
    if config.num_adapters > 1:
        encoder_inputs["task_index"] = torch.tensor([0, 1])
    encoder = T5EncoderGraph(model, plan.t5.residual)
    graphs["t5_encoder"] = _Graph(
        encoder,
        encoder_inputs,
        list(T5EncoderGraph.OUTPUT_NAMES),
        {
            "qformer_tokens": {0: "batch"},
            "aggregator_tokens": {0: "image_batch"},
            "input_ids": {0: "batch", 1: "prompt"},
            "attention_mask": {0: "batch", 1: "prompt"},
            "task_index": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "encoder"},
            "encoder_mask": {0: "batch", 1: "encoder"},
            "cross_k": {1: "batch", 3: "encoder"},
            "cross_v": {1: "batch", 3: "encoder"},
        },
    )
    with torch.no_grad():
        _, encoder_mask, cross_k, cross_v = encoder(*encoder_inputs.values())
    layers = lang.num_decoder_layers
    cache_shape = (layers, rows, lang.num_heads, steps, lang.d_kv)
    decoder_inputs = {
        "token_ids": torch.randint(0, lang.vocab_size, (rows,), generator=generator),
        "position": torch.tensor([1]),
        "self_k": torch.randn(cache_shape, generator=generator).to(cross_k.dtype),
        "self_v": torch.randn(cache_shape, generator=generator).to(cross_k.dtype),
        "cache_rows": torch.arange(rows).flip(0),
        "cross_k": cross_k,
        "cross_v": cross_v,
        "encoder_mask": encoder_mask,
    }
    if config.num_adapters > 1:
        decoder_inputs["task_index"] = torch.tensor([0, 1]).repeat_interleave(beams)
    graphs["t5_decoder_step"] = _Graph(
        T5DecoderStepGraph(model, plan.t5.residual),
        decoder_inputs,
        list(T5DecoderStepGraph.OUTPUT_NAMES),
        {
            "token_ids": {0: "rows"},
            "self_k": {1: "rows", 3: "steps"},
            "self_v": {1: "rows", 3: "steps"},
            "cache_rows": {0: "rows"},
            "cross_k": {1: "batch", 3: "encoder"},
            "cross_v": {1: "batch", 3: "encoder"},
            "encoder_mask": {0: "batch", 1: "encoder"},
            "task_index": {0: "rows"},
            "logits": {0: "rows"},
            "present_k": {1: "rows", 3: "steps"},
            "present_v": {1: "rows", 3: "steps"},
        },
    )
    return graphs


def _dtype_name(tensor: torch.Tensor) -> str:
    return "bfloat16" if tensor.dtype == torch.bfloat16 else str(tensor.dtype).removeprefix("torch.")


def _spec(tensor: torch.Tensor, axes: dict[int, str]) -> TensorSpec:
    return TensorSpec(_dtype_name(tensor), [axes.get(i, size) for i, size in enumerate(tensor.shape)])


def export_onnx(
    model: LionModel, out_dir: str | Path, config: ExportConfig = ExportConfig()
) -> dict[str, GraphSpec]:
    """Cast `model` in place to `config.precision` and write its graphs to `out_dir`/<name>.onnx.

    Returns each graph's file and input/output specs (dtypes, shapes with named dynamic axes).
    Mode "aggregator" has no Q-Former, so no `qformer` graph.
    """
    plan = precision_plan(config.precision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = cast_model(model.eval(), plan)
    specs = {}
    for name, graph in _sample_graphs(model, plan).items():
        started = time.perf_counter()
        log.info("exporting ONNX graph %s (%s); minutes for the full-size model", name, plan.name)
        with torch.no_grad():
            outputs = graph.module(*graph.inputs.values())
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        axes = graph.dynamic_axes
        specs[name] = GraphSpec(
            name=name,
            file=f"{name}.onnx",
            inputs={k: _spec(v, axes.get(k, {})) for k, v in graph.inputs.items()},
            outputs={k: _spec(v, axes.get(k, {})) for k, v in zip(graph.outputs, outputs)},
        )
        int8 = name == "t5_decoder_step" and config.decoder_weights == "int8"
        _export_one(graph, out_dir / f"{name}.onnx", config, int8_weights=int8)
        log.info("exported %s in %.1f s", name, time.perf_counter() - started)
    return specs


def _export_one(graph: _Graph, path: Path, config: ExportConfig, int8_weights: bool) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings():
        # Tracer warnings flag Python-side shape arithmetic; the parity tests run every graph at
        # shapes other than the traced ones, which is the real check.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*",
                                category=DeprecationWarning)
        # Raised for the adapters' gate[task_index]: task indices are router rows, never negative.
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*", category=UserWarning)
        traced = Path(tmp) / path.name
        names = list(graph.inputs)
        torch.onnx.export(
            graph.module,
            tuple(graph.inputs.values()),
            str(traced),
            dynamo=False,
            input_names=names,
            output_names=graph.outputs,
            dynamic_axes={k: v for k, v in graph.dynamic_axes.items() if k in names or k in graph.outputs},
            opset_version=config.opset,
            do_constant_folding=True,
        )
        proto = onnx.load(str(traced))  # pulls in external data the exporter may have written
    _check_interface(proto, names, graph.outputs, path.name)
    if int8_weights:
        summary = quantize_weights_int8(proto, float_heads=["logits"])
        log.info("%s: %d weights to int8, %.1f MB -> %.1f MB (%.1f MB smaller)", path.stem, summary.weights,
                 summary.bytes_before / 1e6, summary.bytes_after / 1e6, summary.saved_mb)
    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = weight_bytes > config.external_data_threshold
    data_file = path.with_name(path.name + ".data")
    data_file.unlink(missing_ok=True)
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_file.name,
        size_threshold=0,
    )
    onnx.checker.check_model(str(path))


def _check_interface(proto: onnx.ModelProto, inputs: list[str], outputs: list[str], what: str) -> None:
    """The exporter silently drops inputs the traced code never read; the runtimes bind by name,
    so a dropped input would be a latent bug in the graph code, not something to tolerate."""
    found_in = [i.name for i in proto.graph.input]
    found_out = [o.name for o in proto.graph.output]
    if found_in != inputs or found_out != outputs:
        raise RuntimeError(f"{what}: exported inputs {found_in} / outputs {found_out}, expected {inputs} / {outputs}")
