"""Weight-only INT8 for ONNX graphs: int8 weights with per-output-channel scales, dequantized in the graph.

Decoding produces one token per row and step, so every decoder weight is read once per step for
a handful of multiply-adds: the step is bound by memory bandwidth, not arithmetic. Storing the
linear weights as int8 cuts those bytes 2x (bf16 / fp16 plans) or 4x (fp32) while activations
and accumulation keep the plan's precision.

    W  [K, N] float   ->   W_q [K, N] int8,  s [N],  DequantizeLinear(W_q, s, axis=1) -> MatMul

Symmetric (zero point 0, codes -127..127, as TensorRT requires) with s = max|W[:, n]| / 127
per output channel n: one outlier only coarsens its own channel. The dequantized tensor keeps
the weight's original name, so every consumer reads it unchanged and a weight shared by several
MatMuls is quantized once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT8_MAX = 127
# Below this many elements a weight saves next to nothing and still costs a DequantizeLinear
# node (a separate kernel wherever it is not fused); every T5 linear of lion-nano and larger has
# >= 6144 elements, so this only matters for toy models.
MIN_ELEMENTS = 1024
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
# DequantizeLinear: `axis` (per-channel scales) since opset 13, float16/bfloat16 scales since 19.
MIN_OPSET = 13
HALF_SCALE_OPSET = 19


@dataclass(frozen=True)
class QuantizeSummary:
    weights: int  # initializers replaced
    bytes_before: int  # their float bytes
    bytes_after: int  # int8 weights + scales

    @property
    def saved_mb(self) -> float:
        return (self.bytes_before - self.bytes_after) / 1e6


def quantize_weights_int8(
    model: onnx.ModelProto, *, float_heads: Sequence[str] = (), min_elements: int = MIN_ELEMENTS
) -> QuantizeSummary:
    """Rewrite `model` in place: every rank-2 float initializer of at least `min_elements` that
    only feeds MatMul / Gemm as the weight (MatMul's second input, Gemm's B) becomes int8 codes +
    scales + DequantizeLinear.

    `float_heads` names graph outputs whose last MatMul / Gemm keeps its float weight. For an LM
    head that is worth its bytes: its rounding error lands on the logits unmixed and flips close
    calls between candidate tokens (lion-nano, 1176 teacher-forced greedy steps: 17 tokens changed
    by an int8 head alone, 4 by all other decoder weights in int8; see docs/deployment.md).

    Weights must be in memory (`onnx.load` loads external data by default). Scales have the
    weight's dtype where the opset allows (>= 19); below that they are float32 and a Cast after
    the DequantizeLinear restores the weight's dtype, so the consumers see the types they had.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise ValueError(f"per-channel DequantizeLinear needs opset >= {MIN_OPSET}, the model has {opset}")
    graph = model.graph
    axes = _weight_axes(graph)
    for output in float_heads:
        axes.pop(_head_weight(graph, output), None)
    used = {name for node in graph.node for name in (*node.input, *node.output)}
    used |= {t.name for t in graph.initializer} | {v.name for v in graph.input}
    initializers, dequantize = [], []
    count = before = after = 0
    for tensor in graph.initializer:
        axis = axes.get(tensor.name)
        if axis is None or tensor.data_type not in FLOAT_TYPES or np.prod(tensor.dims) < min_elements:
            initializers.append(tensor)
            continue
        weight = numpy_helper.to_array(tensor)
        scale_type = tensor.data_type if opset >= HALF_SCALE_OPSET else TensorProto.FLOAT
        codes, scale = _quantize(weight, axis, helper.tensor_dtype_to_np_dtype(scale_type))
        codes_name, scale_name = _unique(f"{tensor.name}_int8", used), _unique(f"{tensor.name}_scale", used)
        initializers += [numpy_helper.from_array(codes, codes_name), numpy_helper.from_array(scale, scale_name)]
        count, before, after = count + 1, before + weight.nbytes, after + codes.nbytes + scale.nbytes
        cast = scale_type != tensor.data_type
        dequantized = _unique(f"{tensor.name}_dequantized", used) if cast else tensor.name
        dequantize.append(helper.make_node("DequantizeLinear", [codes_name, scale_name], [dequantized],
                                           name=f"{tensor.name}/DequantizeLinear", axis=axis))
        if cast:
            dequantize.append(helper.make_node("Cast", [dequantized], [tensor.name], name=f"{tensor.name}/Cast",
                                               to=tensor.data_type))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # They read initializers only: first in the node list keeps the graph topologically sorted.
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return QuantizeSummary(weights=count, bytes_before=before, bytes_after=after)


def _weight_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """Output-channel axis of each rank-2 initializer that is read only as a MatMul / Gemm
    weight, with the same layout everywhere. Initializers that are also graph inputs (values
    the caller may override) are left alone."""
    candidates = {t.name for t in graph.initializer if len(t.dims) == 2} - {v.name for v in graph.input}
    axes: dict[str, int] = {}
    other: set[str] = set()
    for node in graph.node:
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        for index, name in enumerate(node.input):
            if name not in candidates:
                continue
            # MatMul x[.., K] @ W[K, N] and Gemm's B [K, N] give outputs along axis 1; Gemm with
            # transB reads B as [N, K].
            if node.op_type == "MatMul" and index == 1:
                axis = 1
            elif node.op_type == "Gemm" and index == 1:
                axis = 0 if transposed else 1
            else:
                other.add(name)
                continue
            if axes.setdefault(name, axis) != axis:
                other.add(name)
    return {name: axis for name, axis in axes.items() if name not in other}


def _head_weight(graph: onnx.GraphProto, output: str) -> str:
    """The weight input of the last MatMul / Gemm before graph output `output`, found by following
    the first (data) input back through the ops after it (Cast, Gather, Slice, Reshape, ...)."""
    producers = {name: node for node in graph.node for name in node.output}
    name = output
    while name in producers:
        node = producers[name]
        if node.op_type in ("MatMul", "Gemm"):
            return node.input[1]
        name = node.input[0]
    raise ValueError(f"no MatMul / Gemm leads to {output!r}")


def _quantize(weight: np.ndarray, axis: int, scale_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, scales [channels] in scale_dtype) with codes x scale ~ weight."""
    weight = weight.astype(np.float32)
    scale = (np.abs(weight).max(axis=1 - axis) / INT8_MAX).astype(scale_dtype)
    # A channel of zeros (or too small for the scale's dtype) gets scale 1: codes 0, no 0/0.
    scale[scale.astype(np.float32) == 0] = 1
    # Quantize against the scale as stored (rounded to float16 / bfloat16 where it is), so that
    # codes x stored scale is the closest representable weight; clipping catches a scale that
    # rounded down.
    stored = np.expand_dims(scale.astype(np.float32), 1 - axis)
    codes = np.clip(np.rint(weight / stored), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scale


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 0
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate
