"""LION: EVA ViT-g + instruction-aware Q-Former + vision aggregator + FlanT5 with a mixture of adapters.

Attribute names follow transformers' `InstructBlipForConditionalGeneration` (`vision_model`,
`query_tokens`, `qformer`, `language_projection`, `language_model`); LION adds `aggregator`
(official `fusion_adapter`), `ln_adapter`, `adapter_proj`, `soft_prompt_hint` and
`language_model.{encoder,decoder}.block.*.layer.{1,2}.adapter.*`.

Data flow for one image and one question:

    pixel_values [B,3,H,W] --ViT--> block outputs h_0 .. h_{L-1}, each [B, N, W]
      Q-Former path:   ln_vision(h_{L-1}) + query tokens + question  --> [B, 32, d_model]
      aggregator path: aggregator(h_main; h_cross...) -> ln_adapter -> adapter_proj --> [B, N, d_model]
    T5 encoder input = [Q-Former ; aggregator ; embed(prompt with <extra_id_0> := soft_prompt_hint)]
    T5 decoder generates the answer; every FFN adds Σ_k adapter_k(h) ⊙ gate_k[task].

`encode_image` is the per-frame part (ViT, ln_vision, aggregator, projection); `visual_prefix`
is the per-question part (the Q-Former reads the question).
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
    T5Config,
    T5ForConditionalGeneration,
)

from .adapters import MixtureOfAdapters, TaskRouting, add_adapters
from .aggregator import VisionAggregator
from .config import LionConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class ImageFeatures:
    """What one frame contributes, computed once and reused for every question about it.

    qformer_input: [B, N, vision width], ln_vision(ViT output): the Q-Former's cross-attention input.
    aggregator_tokens: [B, N, d_model], the aggregator branch already projected to T5.
    Each is None when the model's `visual_input` mode does not use it.
    """

    qformer_input: torch.Tensor | None
    aggregator_tokens: torch.Tensor | None


@dataclass
class LionOutput:
    loss: torch.Tensor | None  # mean token cross-entropy over labels != -100
    logits: torch.Tensor  # [B, T, vocab]


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model built from its config."""


def task_index_tensor(task_index: torch.Tensor | int, batch_size: int, device: torch.device) -> torch.Tensor:
    """A [B] long tensor of router rows (`TaskKind`) from a tensor or one int for the whole batch."""
    if isinstance(task_index, torch.Tensor):
        task_index = task_index.to(device=device, dtype=torch.long).reshape(-1)
        return task_index.expand(batch_size) if task_index.numel() == 1 else task_index
    return torch.full((batch_size,), int(task_index), dtype=torch.long, device=device)


def parameter_group(name: str) -> str:
    """The component a parameter name belongs to, for freeze policies and optimizer groups.

    One of: "vit", "ln_vision", "qformer" (with query tokens and the projection to T5),
    "aggregator" (with ln_adapter and adapter_proj), "soft_prompt", "adapters", "router", "t5".
    """
    if name.startswith("vision_model.post_layernorm."):
        return "ln_vision"
    if name.startswith("vision_model."):
        return "vit"
    if name.startswith(("query_tokens", "qformer.", "language_projection.")):
        return "qformer"
    if name.startswith(("aggregator.", "ln_adapter.", "adapter_proj.")):
        return "aggregator"
    if name == "soft_prompt_hint":
        return "soft_prompt"
    if ".adapter.router_ratio" in name:
        return "router"
    if ".adapter." in name:
        return "adapters"
    return "t5"


class LionModel(nn.Module):
    """The whole model; which branches exist depends on `config.visual_input`."""

    def __init__(self, config: LionConfig) -> None:
        super().__init__()
        self.config = config
        vision, qformer, lang = config.vision, config.qformer, config.language
        self.routing = TaskRouting()

        self.vision_model = InstructBlipVisionModel(
            InstructBlipVisionConfig(
                hidden_size=vision.hidden_size,
                intermediate_size=vision.intermediate_size,
                num_hidden_layers=vision.num_hidden_layers,
                num_attention_heads=vision.num_attention_heads,
                image_size=vision.image_size,
                patch_size=vision.patch_size,
                hidden_act="gelu",
                layer_norm_eps=vision.layer_norm_eps,
                qkv_bias=vision.qkv_bias,
                initializer_range=config.initializer_range,
            )
        )
        # transformers' `post_layernorm` plays LAVIS's `ln_vision`, which has its own epsilon.
        self.vision_model.post_layernorm.eps = vision.ln_vision_eps

        if config.uses_qformer:
            self.query_tokens = nn.Parameter(torch.empty(1, qformer.num_query_tokens, qformer.hidden_size))
            self.qformer = InstructBlipQFormerModel(
                InstructBlipQFormerConfig(
                    vocab_size=qformer.vocab_size,
                    hidden_size=qformer.hidden_size,
                    num_hidden_layers=qformer.num_hidden_layers,
                    num_attention_heads=qformer.num_attention_heads,
                    intermediate_size=qformer.intermediate_size,
                    hidden_act="gelu",
                    hidden_dropout_prob=qformer.hidden_dropout_prob,
                    attention_probs_dropout_prob=qformer.attention_probs_dropout_prob,
                    max_position_embeddings=qformer.max_position_embeddings,
                    initializer_range=config.initializer_range,
                    layer_norm_eps=qformer.layer_norm_eps,
                    cross_attention_frequency=qformer.cross_attention_frequency,
                    encoder_hidden_size=vision.hidden_size,
                )
            )
            self.language_projection = nn.Linear(qformer.hidden_size, lang.d_model)
            nn.init.normal_(self.query_tokens, std=config.initializer_range)

        if config.uses_aggregator:
            self.aggregator = VisionAggregator(config.aggregator, vision.hidden_size, config.initializer_range)
            self.ln_adapter = nn.LayerNorm(vision.hidden_size)
            self.adapter_proj = nn.Sequential(
                nn.Linear(vision.hidden_size, config.aggregator.proj_hidden_size),
                nn.GELU(),
                nn.Linear(config.aggregator.proj_hidden_size, lang.d_model),
            )

        self.soft_prompt_hint = nn.Parameter(torch.randn(lang.d_model))

        t5_config = T5Config(
            vocab_size=lang.vocab_size,
            d_model=lang.d_model,
            d_kv=lang.d_kv,
            d_ff=lang.d_ff,
            num_layers=lang.num_layers,
            num_decoder_layers=lang.num_decoder_layers,
            num_heads=lang.num_heads,
            relative_attention_num_buckets=lang.relative_attention_num_buckets,
            relative_attention_max_distance=lang.relative_attention_max_distance,
            dropout_rate=lang.dropout_rate,
            layer_norm_epsilon=lang.layer_norm_epsilon,
            feed_forward_proj=lang.feed_forward_proj,
            tie_word_embeddings=lang.tie_word_embeddings,
            pad_token_id=lang.pad_token_id,
            eos_token_id=lang.eos_token_id,
            decoder_start_token_id=lang.decoder_start_token_id,
        )
        # Set after construction: T5Config maps "gated-gelu" to `gelu_new` in __post_init__.
        t5_config.dense_act_fn = lang.dense_act_fn
        self.language_model = T5ForConditionalGeneration(t5_config)
        add_adapters(self.language_model, config.num_adapters, config.adapter, self.routing)
        self.tie_embeddings()

    # ----------------------------------------------------------------------------------------
    # Forward pieces

    def route(self, task_index: torch.Tensor | None) -> AbstractContextManager[None]:
        """`with model.route(t):` runs T5 with the [B] task index t (`TaskKind`) selecting each
        sample's router row."""
        return self.routing(task_index)

    def encode_image(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """ViT once per frame; ln_vision for the Q-Former and/or the aggregator branch."""
        agg = self.config.aggregator
        keep = {agg.main_layer, *agg.cross_layers} if self.config.uses_aggregator else set()
        hidden_states = self.vision_model.embeddings(pixel_values)
        intermediate = {}
        for i, layer in enumerate(self.vision_model.encoder.layers):
            hidden_states = layer(hidden_states)
            if i in keep:
                intermediate[i] = hidden_states

        qformer_input = None
        if self.config.uses_qformer:
            ln_vision = self.vision_model.post_layernorm
            qformer_input = ln_vision(hidden_states.to(ln_vision.weight.dtype))

        aggregator_tokens = None
        if self.config.uses_aggregator:
            dtype = self.ln_adapter.weight.dtype
            fused = self.aggregator(
                intermediate[agg.main_layer].to(dtype), [intermediate[i].to(dtype) for i in agg.cross_layers]
            )
            aggregator_tokens = self.adapter_proj(self.ln_adapter(fused))
        return ImageFeatures(qformer_input=qformer_input, aggregator_tokens=aggregator_tokens)

    def visual_prefix(
        self,
        features: ImageFeatures,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The visual tokens for T5's encoder: [B, 32 | N | 32 + N, d_model] in T5's dtype.

        Features of one frame (batch 1) are shared by a batch of questions.
        """
        parts = []
        if self.config.uses_qformer:
            if qformer_input_ids is None:
                raise ValueError("the Q-Former needs the question: pass qformer_input_ids")
            batch_size = qformer_input_ids.shape[0]
            if qformer_attention_mask is None:
                qformer_attention_mask = torch.ones_like(qformer_input_ids)
            query_tokens = self.query_tokens.expand(batch_size, -1, -1)
            query_mask = torch.ones(
                query_tokens.shape[:2], dtype=qformer_attention_mask.dtype, device=query_tokens.device
            )
            image_embeds = features.qformer_input.to(query_tokens.dtype).expand(batch_size, -1, -1)
            query_output = self.qformer(
                input_ids=qformer_input_ids,
                attention_mask=torch.cat([query_mask, qformer_attention_mask], dim=1),
                query_embeds=query_tokens,
                encoder_hidden_states=image_embeds,
            ).last_hidden_state[:, : query_tokens.shape[1]]
            parts.append(self.language_projection(query_output))
        if self.config.uses_aggregator:
            parts.append(features.aggregator_tokens)
        batch_size = max(part.shape[0] for part in parts)
        dtype = self.language_model.shared.weight.dtype
        return torch.cat([part.to(dtype).expand(batch_size, -1, -1) for part in parts], dim=1)

    def encoder_inputs(
        self, visual_prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder `inputs_embeds` [B, P + T, d_model] and mask: visual tokens first, then the prompt.

        Pad the prompt on the right: T5's relative positions then leave every real token where it
        would be in an unpadded sequence, so batching does not change results.
        """
        embeds = self.language_model.shared(input_ids)
        is_hint = (input_ids == self.config.language.soft_prompt_token_id).unsqueeze(-1)
        embeds = torch.where(is_hint, self.soft_prompt_hint.to(embeds.dtype), embeds)
        prefix = visual_prefix.expand(input_ids.shape[0], -1, -1)
        prefix_mask = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([prefix, embeds], dim=1), torch.cat([prefix_mask, attention_mask], dim=1)

    def encode(
        self,
        visual_prefix: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_index: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder over [visual ; prompt]: hidden states [B, S, d_model] and their mask [B, S]."""
        inputs_embeds, mask = self.encoder_inputs(visual_prefix, input_ids, attention_mask)
        with self.route(self._task_index(task_index, input_ids)):
            hidden_states = self.language_model.encoder(inputs_embeds=inputs_embeds, attention_mask=mask)
        return hidden_states.last_hidden_state, mask

    def lm_logits(self, decoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.language_model.config.scale_decoder_outputs:  # original T5 with tied embeddings only
            decoder_hidden_states = decoder_hidden_states * self.config.language.d_model**-0.5
        return self.language_model.lm_head(decoder_hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_index: torch.Tensor | int | None,
        pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> LionOutput:
        """Teacher-forced pass for training: logits [B, T, vocab] and the loss when labels are given.

        `task_index` ([B] or one int, `TaskKind`) is required in mode "all" and ignored otherwise.
        """
        if (pixel_values is None) == (image_features is None):
            raise ValueError("pass exactly one of pixel_values and image_features")
        if image_features is None:
            image_features = self.encode_image(pixel_values)
        prefix = self.visual_prefix(image_features, qformer_input_ids, qformer_attention_mask)
        encoder_hidden_states, encoder_mask = self.encode(prefix, input_ids, attention_mask, task_index)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass labels or decoder_input_ids")
            decoder_input_ids = self.language_model._shift_right(labels)
        with self.route(self._task_index(task_index, input_ids)):
            decoder_hidden_states = self.language_model.decoder(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_mask,
            ).last_hidden_state
        logits = self.lm_logits(decoder_hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return LionOutput(loss=loss, logits=logits)

    def _task_index(self, task_index: torch.Tensor | int | None, input_ids: torch.Tensor) -> torch.Tensor | None:
        if task_index is None:
            return None
        return task_index_tensor(task_index, input_ids.shape[0], input_ids.device)

    # ----------------------------------------------------------------------------------------
    # Weights, precision, checkpoints

    def tie_embeddings(self) -> None:
        """T5's encoder and decoder embeddings are `shared`; lm_head is tied only if configured.

        transformers 5 always ties T5's lm_head to `shared`, but FlanT5 has its own lm_head.
        Re-run after anything that re-creates parameters (`to_empty`).
        """
        lm = self.language_model
        lm.encoder.embed_tokens.weight = lm.shared.weight
        lm.decoder.embed_tokens.weight = lm.shared.weight
        if self.config.language.tie_word_embeddings:
            lm.lm_head.weight = lm.shared.weight
        elif lm.lm_head.weight is lm.shared.weight:
            lm.lm_head.weight = nn.Parameter(lm.shared.weight.detach().clone())

    def apply_dtype_policy(self, device: torch.device | str, policy: str | None = None) -> LionModel:
        """Cast each component to the precision of `policy` (default: the config's), see `LionConfig`."""
        device = torch.device(device)
        policy = policy or self.config.dtype_policy
        if policy == "auto":
            policy = "mixed" if device.type == "cuda" else "fp32"
        self.float()
        if policy == "mixed":
            self.vision_model.half()
            self.vision_model.post_layernorm.float()
            self.language_model.to(torch.bfloat16)
            for module in self.language_model.modules():
                if isinstance(module, MixtureOfAdapters):
                    module.float()
        return self

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Every persistent tensor by name; a tied weight appears once, under its first name."""
        tensors, seen = {}, set()
        for name, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors[name] = tensor
        return tensors

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        """config.json + model.safetensors, or numbered shards with an index above max_shard_bytes.

        Tokenizer subfolders (`tokenizer/`, `qformer_tokenizer/`) are left alone.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob("model*.safetensors"), directory / WEIGHTS_INDEX_NAME]:
            stale.unlink(missing_ok=True)
        self.config.save(directory / CONFIG_NAME)

        shards: list[dict[str, torch.Tensor]] = [{}]
        shard_bytes = 0
        for name, tensor in self.checkpoint_tensors().items():
            size = tensor.numel() * tensor.element_size()
            if shards[-1] and shard_bytes + size > max_shard_bytes:
                shards.append({})
                shard_bytes = 0
            shards[-1][name] = tensor.detach().contiguous()
            shard_bytes += size

        if len(shards) == 1:
            save_file(shards[0], directory / WEIGHTS_NAME, metadata={"format": "pt"})
            return
        weight_map, total = {}, 0
        for k, shard in enumerate(shards, start=1):
            filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, directory / filename, metadata={"format": "pt"})
            for name, tensor in shard.items():
                weight_map[name] = filename
                total += tensor.numel() * tensor.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> LionModel:
        """Load a `save_pretrained` directory strictly: any missing or unexpected tensor is an error.

        dtype: None for the config's `dtype_policy`, a policy name ("auto", "fp32", "mixed"), or
        one torch dtype for every module. The model is returned in eval mode.
        """
        directory = Path(directory)
        config = LionConfig.load(directory / CONFIG_NAME)
        with torch.device("meta"):
            model = cls(config)
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        else:
            model.apply_dtype_policy(device, dtype)
        model.to_empty(device=device)
        model.tie_embeddings()
        model._reset_non_persistent_buffers()
        model.load_checkpoint(directory)
        return model.eval()

    def load_checkpoint(self, directory: str | Path) -> None:
        """Copy a checkpoint's tensors into this model in place, after checking names and shapes."""
        directory = Path(directory)
        index_path = directory / WEIGHTS_INDEX_NAME
        if index_path.exists():
            files = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        else:
            files = [WEIGHTS_NAME]
        expected = self.checkpoint_tensors()
        found: dict[str, str] = {}
        for filename in files:
            with safe_open(directory / filename, framework="pt") as f:
                found.update(dict.fromkeys(f.keys(), filename))  # safe_open objects are not iterable
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"checkpoint {directory} does not match the model built from its config:\n"
                f"  missing ({len(missing)}): {missing}\n  unexpected ({len(unexpected)}): {unexpected}"
            )
        with torch.no_grad():
            for filename in files:
                with safe_open(directory / filename, framework="pt") as f:
                    names = f.keys()
                    for name in names:
                        target = expected[name]
                        shape = tuple(f.get_slice(name).get_shape())
                        if shape != tuple(target.shape):
                            raise CheckpointMismatchError(
                                f"{name}: checkpoint shape {shape}, model shape {tuple(target.shape)}"
                            )
                        target.copy_(f.get_tensor(name))

    def _reset_non_persistent_buffers(self) -> None:
        """Refill buffers that checkpoints do not store (after `to_empty` left them uninitialised)."""
        if self.config.uses_qformer:
            position_ids = self.qformer.embeddings.position_ids
            position_ids.copy_(torch.arange(position_ids.shape[-1], device=position_ids.device).expand_as(position_ids))
