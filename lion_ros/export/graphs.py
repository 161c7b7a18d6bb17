"""The four exported graphs as torch modules over a loaded `LionModel`, with explicit precision.

    vision           pixel_values -> qformer_input (ln_vision(ViT)), aggregator_tokens
    qformer          qformer_input + question tokens -> qformer_tokens [B, queries, d_model]
    t5_encoder       visual tokens + prompt ids (+ task index) -> encoder states, encoder mask,
                     cross-attention K/V of every decoder layer
    t5_decoder_step  one token per row at `position` over fixed-size self-attention K/V buffers
                     -> logits and the updated buffers (mirrors `generation.T5DecoderStep`)

Precision lives in the weights: `cast_model` gives every module the dtype of the chosen plan,
and the forward passes cast activations to each consumer's weight dtype, so the traced ONNX
carries explicit Cast nodes (what TensorRT's strongly typed networks need). Float graph inputs
and outputs are float32 whatever the plan, except the K/V tensors, which stay in T5's compute
dtype because they are large and only ever flow between the two T5 graphs.

The T5 forward is written here instead of calling transformers' T5Stack because (a) the fp16
plan needs a float32 residual stream, which T5Stack cannot express, and (b) its mask and bias
helpers are not reliably traceable with dynamic lengths. It reuses T5's own modules and weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from lion_ros.model.adapters import MixtureOfAdapters
from lion_ros.model.lion import LionModel

# Added to attention scores (always in float32 here) at masked keys. Finite, so a fully masked
# row cannot turn into NaN, and representable in float32/bfloat16 should a graph rewrite move it.
MASK_VALUE = -1.0e9
FP16_MAX = 65504.0


def dynamic_arange(like: torch.Tensor) -> torch.Tensor:
    """arange(len(like)) as int64, exported as a function of `like`'s length (tracing freezes
    torch.arange(n) to a constant). The sum runs in float32, exact up to 2**24: TensorRT's ONNX
    parser documents CumSum for float types, not INT64 (up to 10.7 it becomes a loop)."""
    return (torch.cumsum(torch.ones_like(like, dtype=torch.float32), 0) - 1).long()


@dataclass(frozen=True)
class T5Precision:
    """Dtypes inside the T5 graphs."""

    compute: torch.dtype  # linear weights, attention matmuls, K/V tensors
    residual: torch.dtype  # the residual stream between sublayers
    norm: torch.dtype  # RMSNorm weights (the variance is always accumulated in float32)
    ffn_output: torch.dtype  # the gated product and the FFN down projection `wo`
    clamp_to_fp16: bool  # clip weights to the float16 range before casting


@dataclass(frozen=True)
class PrecisionPlan:
    """Per-graph precision. Q-Former, aggregator, ln_vision, soft prompt and adapters stay float32,
    as in the model's own "mixed" policy (they are small and the reference runs them in float32)."""

    name: str
    vit: torch.dtype
    t5: T5Precision


_FP32_T5 = T5Precision(torch.float32, torch.float32, torch.float32, torch.float32, False)
PRECISIONS: dict[str, PrecisionPlan] = {
    # ONNX Runtime CPU and the parity reference.
    "fp32": PrecisionPlan("fp32", torch.float32, _FP32_T5),
    # TensorRT default: FlanT5 was trained in bfloat16 and LION runs it that way.
    "bf16": PrecisionPlan(
        "bf16", torch.float16, T5Precision(torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.bfloat16, False)
    ),
    # GPUs / TensorRT without bfloat16: the overflow sites of T5 in float16 (residual adds,
    # RMSNorm, FFN down projection) stay float32 and the weights are clipped to the fp16 range.
    "fp16": PrecisionPlan(
        "fp16", torch.float16, T5Precision(torch.float16, torch.float32, torch.float32, torch.float32, True)
    ),
}


def precision_plan(name: str) -> PrecisionPlan:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


@torch.no_grad()
def cast_model(model: LionModel, plan: PrecisionPlan) -> LionModel:
    """Give every module the dtype `plan` asks for, in place."""
    model.float()
    vit = model.vision_model
    vit.embeddings.to(plan.vit)
    vit.encoder.to(plan.vit)
    t5, precision = model.language_model, plan.t5
    if precision.clamp_to_fp16:
        for param in t5.parameters():
            param.clamp_(-FP16_MAX, FP16_MAX)
    t5.to(precision.compute)
    for module in t5.modules():
        if isinstance(module, MixtureOfAdapters):
            module.float()
        elif isinstance(module, T5LayerNorm):
            module.to(precision.norm)
    for stack in (t5.encoder, t5.decoder):
        for block in stack.block:
            block.layer[-1].DenseReluDense.wo.to(precision.ffn_output)
    model.tie_embeddings()
    return model


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class VisionGraph(nn.Module):
    """pixel_values [B, 3, H, W] float32 -> qformer_input [B, N, W] and/or aggregator_tokens [B, N, d_model]."""

    def __init__(self, model: LionModel) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def output_names(model: LionModel) -> list[str]:
        return [name for name, used in (("qformer_input", model.config.uses_qformer),
                                        ("aggregator_tokens", model.config.uses_aggregator)) if used]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.encode_image(pixel_values.to(_dtype_of(self.model.vision_model.embeddings)))
        return tuple(
            tensor.float() for tensor in (features.qformer_input, features.aggregator_tokens) if tensor is not None
        )


class QFormerGraph(nn.Module):
    """qformer_input [1 or B, N, W], question ids/mask [B, Lq] -> qformer_tokens [B, queries, d_model].

    Same computation as the Q-Former branch of `LionModel.visual_prefix`; one frame's features
    (batch 1) serve a batch of questions.
    """

    def __init__(self, model: LionModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, qformer_input: torch.Tensor, qformer_input_ids: torch.Tensor, qformer_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        batch_size = qformer_input_ids.shape[0]
        query_tokens = model.query_tokens.expand(batch_size, -1, -1)
        query_mask = torch.ones_like(query_tokens[:, :, 0], dtype=qformer_attention_mask.dtype)
        output = model.qformer(
            input_ids=qformer_input_ids,
            attention_mask=torch.cat([query_mask, qformer_attention_mask], dim=1),
            query_embeds=query_tokens,
            encoder_hidden_states=qformer_input.to(query_tokens.dtype).expand(batch_size, -1, -1),
        ).last_hidden_state[:, : query_tokens.shape[1]]
        return model.language_projection(output).float()


class _T5Layers(nn.Module):
    """T5 sublayers with an explicit precision plan (see module docstring)."""

    def __init__(self, model: LionModel, residual: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.residual = residual
        language = model.config.language
        self.num_heads, self.d_kv = language.num_heads, language.d_kv

    def heads(self, states: torch.Tensor) -> torch.Tensor:
        """[N, L, heads * d_kv] -> [N, heads, L, d_kv]"""
        return states.unflatten(-1, (self.num_heads, self.d_kv)).transpose(1, 2)

    def project(self, linear: nn.Linear, states: torch.Tensor) -> torch.Tensor:
        return linear(states.to(linear.weight.dtype))

    @staticmethod
    def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """query [.., Lq, d_kv] against keys/values [.., Lk, d_kv]; bias float32, broadcastable to the scores.

        T5 folds the 1/sqrt(d) scaling into its weights, so scores are plain dot products. The
        scores are float32 for the bias add and softmax, as transformers' T5Attention does.
        """
        scores = torch.matmul(query, keys.transpose(-1, -2)).float() + bias
        weights = scores.softmax(-1).to(values.dtype)
        return torch.matmul(weights, values)

    def merge(self, attention: T5Attention, context: torch.Tensor) -> torch.Tensor:
        """[N, heads, L, d_kv] -> output projection [N, L, d_model] in the residual dtype."""
        return self.project(attention.o, context.transpose(1, 2).flatten(2)).to(self.residual)

    def feed_forward(self, layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """T5LayerFFWithAdapters: h + FFN(RMSNorm(h)) + Router(h), with the FFN product in wo's dtype."""
        dense = layer.DenseReluDense
        x = layer.layer_norm(hidden_states)
        if hasattr(dense, "wi_0"):
            out_dtype = dense.wo.weight.dtype
            inner = dense.act(self.project(dense.wi_0, x)).to(out_dtype) * self.project(dense.wi_1, x).to(out_dtype)
        else:
            inner = dense.act(self.project(dense.wi, x))
        forwarded = self.project(dense.wo, inner).to(self.residual)
        return hidden_states + forwarded + layer.adapter(hidden_states)

    @staticmethod
    def position_bias(attention: T5Attention, relative_position: torch.Tensor) -> torch.Tensor:
        """Relative position bias [heads, *relative_position.shape] in float32."""
        buckets = attention._relative_position_bucket(
            relative_position,
            bidirectional=not attention.is_decoder,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        values = attention.relative_attention_bias(buckets).float()
        return values.permute(values.dim() - 1, *range(values.dim() - 1))  # heads first


class T5EncoderGraph(_T5Layers):
    """Visual tokens + prompt -> encoder states [B, S, d_model] float32, encoder mask [B, S] int64,
    cross_k / cross_v [decoder layers, B, heads, S, d_kv] in the compute dtype.

    Inputs: qformer_tokens [B, Q, d_model] (modes "qformer", "all"), aggregator_tokens
    [1 or B, N, d_model] (modes "aggregator", "all"), input_ids / attention_mask [B, T] int64
    (right-padded prompt; `<extra_id_0>` is replaced by the soft prompt inside the graph), and
    task_index [B] int64 (mode "all": the router row, 0 region, 1 image).
    """

    OUTPUT_NAMES = ("encoder_hidden_states", "encoder_mask", "cross_k", "cross_v")

    @staticmethod
    def input_names(model: LionModel) -> list[str]:
        config = model.config
        return (
            (["qformer_tokens"] if config.uses_qformer else [])
            + (["aggregator_tokens"] if config.uses_aggregator else [])
            + ["input_ids", "attention_mask"]
            + (["task_index"] if config.num_adapters > 1 else [])
        )

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names(self.model), inputs))
        model, t5 = self.model, self.model.language_model
        input_ids, attention_mask = named["input_ids"], named["attention_mask"]
        batch_size = input_ids.shape[0]

        embeds = t5.shared(input_ids)
        is_hint = (input_ids == model.config.language.soft_prompt_token_id).unsqueeze(-1)
        embeds = torch.where(is_hint, model.soft_prompt_hint.to(embeds.dtype), embeds)
        # The model hands the visual prefix to T5 in T5's dtype: same rounding here.
        compute = t5.shared.weight.dtype
        parts = [named[name].to(compute).expand(batch_size, -1, -1)
                 for name in ("qformer_tokens", "aggregator_tokens") if name in named]
        hidden_states = torch.cat([part.to(self.residual) for part in parts] + [embeds.to(self.residual)], dim=1)
        mask = torch.cat([torch.ones_like(part[:, :, 0], dtype=attention_mask.dtype) for part in parts]
                         + [attention_mask], dim=1)

        positions = dynamic_arange(mask[0])
        blocks = t5.encoder.block
        bias = self.position_bias(blocks[0].layer[0].SelfAttention, positions[None, :] - positions[:, None])
        bias = bias.unsqueeze(0) + (1.0 - mask[:, None, None, :].float()) * MASK_VALUE  # [B, heads, S, S]

        task_index = named.get("task_index")
        with model.route(task_index):
            for block in blocks:
                layer = block.layer[0]
                attention = layer.SelfAttention
                x = layer.layer_norm(hidden_states)
                q, k, v = (self.heads(self.project(linear, x)) for linear in (attention.q, attention.k, attention.v))
                hidden_states = hidden_states + self.merge(attention, self.attend(q, k, v, bias))
                hidden_states = self.feed_forward(block.layer[-1], hidden_states)
            encoder_states = t5.encoder.final_layer_norm(hidden_states).to(compute)

        cross = [block.layer[1].EncDecAttention for block in t5.decoder.block]
        cross_k = torch.stack([self.heads(self.project(attention.k, encoder_states)) for attention in cross])
        cross_v = torch.stack([self.heads(self.project(attention.v, encoder_states)) for attention in cross])
        return encoder_states.float(), mask, cross_k, cross_v


class T5DecoderStepGraph(_T5Layers):
    """One decoder position for N = B x beams rows over fixed-size self-attention K/V buffers.

    Inputs: token_ids [N] int64, position [1] int64, self_k / self_v [layers, N, heads, T, d_kv]
    (T = max new tokens; entries at and after `position` are ignored), cache_rows [N] int64
    (row n continues the history of buffer row cache_rows[n]: beam reordering, arange for greedy),
    cross_k / cross_v [layers, B, heads, S, d_kv], encoder_mask [B, S] int64, task_index [N] int64
    (mode "all" only).
    Outputs: logits [N, vocab] float32 and present_k / present_v, the reordered buffers with this
    position's K/V written in. Whole buffers in and out keep every shape constant over a
    generation (one CUDA graph per shape bucket, no scatter kernel outside the engine).

    Cross K/V are stored once per sample and shared by its beams: the beams become the query
    axis of cross-attention, so no copy per beam is needed.
    """

    OUTPUT_NAMES = ("logits", "present_k", "present_v")

    @staticmethod
    def input_names(model: LionModel) -> list[str]:
        return ["token_ids", "position", "self_k", "self_v", "cache_rows", "cross_k", "cross_v", "encoder_mask"] + (
            ["task_index"] if model.config.num_adapters > 1 else []
        )

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        named = dict(zip(self.input_names(self.model), inputs))
        model, decoder = self.model, self.model.language_model.decoder
        position, rows = named["position"], named["token_ids"].shape[0]
        self_k = named["self_k"].index_select(1, named["cache_rows"])
        self_v = named["self_v"].index_select(1, named["cache_rows"])
        cross_k, cross_v = named["cross_k"], named["cross_v"]
        batch_size = cross_k.shape[1]

        hidden_states = decoder.embed_tokens(named["token_ids"]).unsqueeze(1).to(self.residual)  # [N, 1, d_model]
        keys = dynamic_arange(self_k[0, 0, 0, :, 0])
        self_bias = self.position_bias(decoder.block[0].layer[0].SelfAttention, keys - position)  # [heads, T]
        self_bias = torch.where(keys > position, MASK_VALUE, self_bias)[None, :, None, :]  # causal
        write = (keys == position)[:, None]  # [T, 1]: where this step's K/V go
        cross_bias = ((1.0 - named["encoder_mask"].float()) * MASK_VALUE)[:, None, None, :]  # [B, 1, 1, S]

        present_k, present_v = [], []
        with model.route(named.get("task_index")):
            for i, block in enumerate(decoder.block):
                self_layer, cross_layer, ff_layer = block.layer
                attention = self_layer.SelfAttention
                x = self_layer.layer_norm(hidden_states)
                q, k, v = (self.heads(self.project(linear, x)) for linear in (attention.q, attention.k, attention.v))
                layer_k = torch.where(write, k, self_k[i])
                layer_v = torch.where(write, v, self_v[i])
                present_k.append(layer_k)
                present_v.append(layer_v)
                hidden_states = hidden_states + self.merge(attention, self.attend(q, layer_k, layer_v, self_bias))

                attention = cross_layer.EncDecAttention
                x = cross_layer.layer_norm(hidden_states)
                # [N, heads, 1, d] -> [B, heads, beams, d]: a sample's beams query its K/V together.
                q = self.heads(self.project(attention.q, x)).reshape(batch_size, -1, self.num_heads, self.d_kv)
                context = self.attend(q.transpose(1, 2), cross_k[i], cross_v[i], cross_bias)
                context = context.transpose(1, 2).reshape(rows, self.num_heads, 1, self.d_kv)
                hidden_states = hidden_states + self.merge(attention, context)
                hidden_states = self.feed_forward(ff_layer, hidden_states)
        hidden_states = decoder.final_layer_norm(hidden_states)
        head = model.language_model.lm_head
        logits = model.lm_logits(hidden_states.to(head.weight.dtype))[:, 0].float()
        return logits, torch.stack(present_k), torch.stack(present_v)
