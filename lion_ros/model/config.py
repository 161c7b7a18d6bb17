"""Configuration of the LION model: one dataclass per component, JSON-serialisable.

The field names follow the Hugging Face configs they are turned into (`InstructBlipVisionConfig`,
`InstructBlipQFormerConfig`, `BertConfig`, `T5Config`), so a reader can map them one to one.
Kept free of torch so that tools can read a checkpoint's configuration without loading a model.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VISUAL_INPUT_MODES = ("qformer", "aggregator", "all")
DTYPE_POLICIES = ("auto", "fp32", "mixed")


@dataclass
class VisionConfig:
    """EVA ViT-g/14 with its 40th block removed (LAVIS `create_eva_vit_g`)."""

    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1408
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    intermediate_size: int = 6144  # int(1408 * 4.3637)
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    # LAVIS's `ln_vision` is a plain nn.LayerNorm (eps 1e-5), not the ViT's 1e-6 norm layer.
    ln_vision_eps: float = 1e-5

    @property
    def patch_grid(self) -> int:
        """Patches per side of the (square) input."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """CLS + one token per patch."""
        return self.patch_grid ** 2 + 1


@dataclass
class QFormerConfig:
    """InstructBLIP's instruction-aware Q-Former (BERT-base with cross-attention every 2nd layer)."""

    vocab_size: int = 30523  # bert-base-uncased + [DEC]
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12


@dataclass
class AggregatorConfig:
    """LION's vision aggregator (official `fusion_adapter`) and the MLP that projects it to T5.

    Its hidden width is the ViT width. The layer indices are 0-based ViT block outputs
    (`intermediate[i]` of the official code).
    """

    num_layers: int = 2
    num_attention_heads: int = 16
    intermediate_size: int = 3072  # BERT's default, not 4 x width: the official code never sets it
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    main_layer: int = 38  # the query / hidden stream
    cross_layers: tuple[int, ...] = (28, 18)  # block k cross-attends to cross_layers[k]
    proj_hidden_size: int = 5632  # adapter_proj: width -> proj_hidden_size -> d_model (4 x width)


@dataclass
class LanguageConfig:
    """FlanT5 encoder-decoder. Frozen in every training stage of the paper."""

    vocab_size: int = 32128
    d_model: int = 2048
    d_ff: int = 5120
    num_heads: int = 32
    d_kv: int = 64
    num_layers: int = 24
    num_decoder_layers: int = 24
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    # LAVIS and LION override FlanT5's `gelu_new` (tanh approximation) with the exact GELU.
    dense_act_fn: str = "gelu"
    tie_word_embeddings: bool = False  # FlanT5 has a separate lm_head
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # `<extra_id_0>`: its embedding is replaced by the learned soft prompt (the paper's `<hint>`).
    soft_prompt_token_id: int = 32099


@dataclass
class AdapterConfig:
    """Bottleneck adapters in every T5 FFN; with two of them a per-task gate routes between them."""

    bottleneck: int = 64
    dropout: float = 0.0
    num_task_types: int = 2  # router rows: TaskKind.REGION = 0, TaskKind.IMAGE = 1


@dataclass
class LionConfig:
    """The whole model.

    `visual_input` selects the training stage's visual path: "qformer" (stage 1, 32 tokens),
    "aggregator" (stage 2, one token per ViT token) or "all" (stage 3, both, with two adapters
    per FFN and router gates).

    `dtype_policy`:
      * "fp32": every module in float32 (what the official code does on CPU).
      * "mixed": the official CUDA precisions: ViT float16, T5 bfloat16, LION's own modules
        (Q-Former, aggregator, projections, ln_vision, soft prompt, adapters) float32;
        activations are cast at each boundary.
      * "auto": "mixed" on CUDA, "fp32" elsewhere.
    """

    name: str = "lion-4b"
    visual_input: str = "all"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    initializer_range: float = 0.02
    dtype_policy: str = "auto"

    def __post_init__(self) -> None:
        if self.visual_input not in VISUAL_INPUT_MODES:
            raise ValueError(f"visual_input must be one of {VISUAL_INPUT_MODES}, got {self.visual_input!r}")
        if self.dtype_policy not in DTYPE_POLICIES:
            raise ValueError(f"dtype_policy must be one of {DTYPE_POLICIES}, got {self.dtype_policy!r}")
        agg, depth = self.aggregator, self.vision.num_hidden_layers
        if len(agg.cross_layers) != agg.num_layers:
            raise ValueError(f"aggregator.cross_layers needs one ViT layer per block ({agg.num_layers})")
        if not all(0 <= i < depth for i in (agg.main_layer, *agg.cross_layers)):
            raise ValueError(f"aggregator layer indices must be ViT block indices in [0, {depth})")

    @property
    def uses_qformer(self) -> bool:
        return self.visual_input in ("qformer", "all")

    @property
    def uses_aggregator(self) -> bool:
        return self.visual_input in ("aggregator", "all")

    @property
    def num_adapters(self) -> int:
        return 2 if self.visual_input == "all" else 1

    @property
    def num_visual_tokens(self) -> int:
        """Length of the visual prefix of the T5 encoder input: [Q-Former ; aggregator]."""
        return (self.qformer.num_query_tokens if self.uses_qformer else 0) + (
            self.vision.num_tokens if self.uses_aggregator else 0
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LionConfig:
        data = dict(data)
        sections = {
            "vision": VisionConfig,
            "qformer": QFormerConfig,
            "aggregator": AggregatorConfig,
            "language": LanguageConfig,
            "adapter": AdapterConfig,
        }
        for key, section_cls in sections.items():
            if key in data:
                data[key] = _section_from_dict(section_cls, data[key])
        return _section_from_dict(cls, data)

    def overlay(self, data: Mapping[str, Any]) -> LionConfig:
        """This config with the fields of a partial `to_dict` laid over it, section by section.

        Unknown fields and values of the wrong JSON type are errors (ValueError) naming them, so
        a hand-written config.json fails here instead of deep inside the model's constructor.
        """
        merged = self.to_dict()
        wrong = []
        for key, value in data.items():
            current = merged.get(key)
            if isinstance(current, dict):
                if not isinstance(value, Mapping):
                    wrong.append(f"{key} must be an object of fields, got {value!r}")
                    continue
                wrong += [
                    f"{key}.{name} must be like {current[name]!r}, got {v!r}"
                    for name, v in value.items()
                    if name in current and not _same_json_type(current[name], v)
                ]
                merged[key] = {**current, **value}
            else:
                if key in merged and not _same_json_type(current, value):
                    wrong.append(f"{key} must be like {current!r}, got {value!r}")
                merged[key] = value
        if wrong:
            raise ValueError("bad config fields: " + "; ".join(wrong))
        return LionConfig.from_dict(merged)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LionConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def preset(cls, name: str) -> LionConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]()


def _section_from_dict(section_cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {section_cls.__name__} fields: {sorted(unknown)}")
    if "cross_layers" in data:  # JSON has no tuples
        data = {**data, "cross_layers": tuple(data["cross_layers"])}
    return section_cls(**data)


def _same_json_type(current: Any, value: Any) -> bool:
    """Whether `value` can stand for a field whose value is `current` (an int is a valid float)."""
    if isinstance(current, (bool, str)):
        return isinstance(value, type(current))
    if isinstance(current, (int, float)):
        numbers = (int,) if isinstance(current, int) else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if isinstance(current, (list, tuple)):  # elements like the first one
        return isinstance(value, (list, tuple)) and (not current or all(_same_json_type(current[0], v) for v in value))
    return True


def lion_4b() -> LionConfig:
    """LION-FlanT5-XL: ≈ 4.1 B parameters."""
    return LionConfig(name="lion-4b")


def lion_12b() -> LionConfig:
    """LION-FlanT5-XXL: ≈ 12.4 B parameters."""
    return LionConfig(
        name="lion-12b",
        language=LanguageConfig(d_model=4096, d_ff=10240, num_heads=64),
    )


def lion_nano() -> LionConfig:
    """A ≈ 6 M-parameter LION trained from scratch on synthetic tabletop scenes (CPU-trainable).

    Same architecture as the real model (ViT, 32-query instruction-aware Q-Former, 2-block
    aggregator over three ViT depths, gated adapters), scaled down in width and depth, with a
    160 px input (100 patches instead of 256) so that training fits a 2-core CPU budget. No
    dropout: nano sees every synthetic scene about once, so it cannot overfit, and on CPU the
    dropout masks cost a fifth of a training step. Both vocabularies are ours: the tokenizers
    are trained on the synthetic corpus, so their sizes and the soft-prompt token id must
    match the tokenizer files shipped with it.
    """
    return LionConfig(
        name="lion-nano",
        vision=VisionConfig(
            image_size=160, patch_size=16, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
            intermediate_size=256,
        ),
        qformer=QFormerConfig(
            vocab_size=2048,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        aggregator=AggregatorConfig(
            num_attention_heads=4, intermediate_size=256, main_layer=5, cross_layers=(3, 1), proj_hidden_size=512,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ),
        language=LanguageConfig(
            vocab_size=2048,
            d_model=192,
            d_ff=384,
            num_heads=4,
            d_kv=48,
            num_layers=3,
            num_decoder_layers=3,
            dropout_rate=0.0,
            soft_prompt_token_id=2047,  # <extra_id_0> is the last id, as in T5
        ),
        adapter=AdapterConfig(bottleneck=32),
    )


def lion_tiny() -> LionConfig:
    """A few-hundred-thousand-parameter model for unit tests; the real geometry is not kept."""
    return LionConfig(
        name="lion-tiny",
        vision=VisionConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=64,
        ),
        qformer=QFormerConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
            num_query_tokens=4,
        ),
        aggregator=AggregatorConfig(
            num_attention_heads=4, intermediate_size=64, main_layer=3, cross_layers=(2, 1), proj_hidden_size=64
        ),
        language=LanguageConfig(
            vocab_size=48,
            d_model=32,
            d_ff=64,
            num_heads=4,
            d_kv=8,
            num_layers=2,
            num_decoder_layers=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            soft_prompt_token_id=47,
        ),
        adapter=AdapterConfig(bottleneck=8),
    )


PRESETS = {"lion-4b": lion_4b, "lion-12b": lion_12b, "lion-nano": lion_nano, "lion-tiny": lion_tiny}
