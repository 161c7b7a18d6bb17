"""Convert the official LION release into our model directory.

Inputs, as the official code loads them (lion-model.md §7), later sources overriding earlier ones
exactly as the official load order does:
  1. `eva_vit_g.pth`: the LAVIS EVA ViT-g state dict (un-prefixed `blocks.{i}.*` names);
  2. a FlanT5 directory: transformers `T5ForConditionalGeneration` weights (safetensors or .bin,
     sharded or not), its config.json and its tokenizer;
  3. the LION .pth: LION's own modules plus whatever frozen weights it carries
     (`visual_encoder.*`, `t5_model.*`), optionally under a "model" key;
and a bert-base-uncased tokenizer directory for the Q-Former (LION adds `[DEC]`).

Output: config.json + model.safetensors (or shards) + tokenizer/ + qformer_tokenizer/, loadable by
`LionModel.from_pretrained` and `PyTorchRuntime.from_pretrained`.

Name mapping (official -> ours; transformers' InstructBLIP naming, see `lion.py`):
  visual_encoder.* / EVA file      -> vision_model.*            (EVA names, see `_eva_name`)
  ln_vision.*                      -> vision_model.post_layernorm.*
  Qformer.bert.embeddings.LayerNorm.* -> qformer.embeddings.layernorm.*
  Qformer.bert.*.{attention,crossattention}.self.* -> qformer.*.{..}.attention.*
  Qformer.bert.*                   -> qformer.*
  query_tokens, soft_prompt_hint, ln_adapter.*, adapter_proj.{0,2}.*   unchanged
  t5_proj.*                        -> language_projection.*
  fusion_adapter.*                 -> aggregator.*
  t5_model.* / FlanT5 file         -> language_model.*
EVA: blocks.{i}.attn.{q_bias,v_bias} become one qkv bias cat(q_bias, 0, v_bias) (EVA has no key
bias), norm1/norm2 -> layer_norm1/2, attn.proj -> self_attn.projection, cls_token ->
embeddings.class_embedding, pos_embed -> embeddings.position_embedding, patch_embed.proj ->
embeddings.patch_embedding.

Architecture: a preset (`preset`, else the one of FlanT5's d_model), optionally with a partial
config.json laid over it (`overrides`, the `LionConfig.to_dict` layout) for sizes no preset
describes. T5's shape comes from FlanT5's config.json, the vocabulary sizes and the soft-prompt id
from the tokenizers, lm_head tying from the weights; an override that contradicts them is an error.

Deliberately dropped (reported, never an error): EVA blocks beyond the configured depth (LION,
like BLIP-2, removes the 40th block of EVA-CLIP-g), the Q-Former's `position_ids` buffer (ours
is rebuilt as arange; a non-arange one is an error) and T5's `{encoder,decoder}.embed_tokens`
copies of `shared` (tied). Everything else is strict: any expected tensor no source provides
(missing) and any source tensor that maps to nothing (unexpected) is an error naming each one,
unless a pattern of `allow_missing` (our names) / `allow_unexpected` (source names) matches it.
An allowed missing tensor keeps the model's initialisation (seed 0).

Dtypes: every floating tensor is cast to `dtype`: "float32" (default; bf16/fp16 -> fp32 is exact,
and the runtime casts again to its own precision policy at load), "bfloat16", "float16" (beware:
bf16 T5 weights can overflow fp16), or "mixed": each tensor in the dtype the official model holds
it in after its CUDA load (`official_dtypes`). Integer tensors are kept.

Security: .pth files are pickles. They are read with `torch.load(weights_only=True)` only, which
refuses anything but tensors and plain containers instead of running code from the file.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .config import LionConfig
from .lion import LionModel, parameter_group

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = (*DTYPES, "mixed")
PRESET_BY_D_MODEL = {2048: "lion-4b", 4096: "lion-12b"}
# Files of a transformers tokenizer directory (FlanT5: SentencePiece; bert-base-uncased: WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "vocab.txt",
)

Tensors = dict[str, torch.Tensor]


class ConversionError(ValueError):
    """The inputs cannot be converted; the message names every offending tensor or file."""


@dataclass(frozen=True)
class ConvertConfig:
    preset: str | None = None  # architecture besides T5; None: from FlanT5's d_model
    # A partial config.json laid over the preset (`LionConfig.overlay`): sizes no preset has.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    allow_missing: tuple[str, ...] = ()  # fnmatch patterns over our tensor names
    # fnmatch patterns over source names, bare or labelled by source: "Qformer.cls.*", "lion:Qformer.cls.*"
    allow_unexpected: tuple[str, ...] = ()
    max_shard_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")


@dataclass
class ConversionReport:
    output: Path
    config: LionConfig
    tensors: int
    dropped: list[str] = field(default_factory=list)  # "source:name (why)"
    overridden: list[str] = field(default_factory=list)  # our names a later source replaced
    allowed_missing: list[str] = field(default_factory=list)
    allowed_unexpected: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Reading files


def load_torch_weights(path: str | Path) -> Tensors:
    """A state dict of tensors from a .pth/.bin pickle, without running code from the file.

    A training checkpoint's {"model": state_dict, ...} is unwrapped (the rest, e.g. optimizer
    state or epoch, is ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{path} is not a plain weights file: it holds objects other than tensors, which loading "
            f"would have to execute ({reason}). Only state dicts of tensors are accepted."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConversionError(f"cannot read {path}: {exc} (truncated or not a PyTorch file?)") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a {type(data).__name__}, not a state dict")
    not_tensors = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: entries that are not tensors: {not_tensors}")
    return dict(data)


def load_hf_weights(directory: Path) -> Tensors:
    """All tensors of a transformers model directory (safetensors preferred, sharded or not)."""
    for single, index, loader in (
        ("model.safetensors", "model.safetensors.index.json", load_file),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", load_torch_weights),
    ):
        files: list[Path] = []
        if (directory / single).is_file():
            files = [directory / single]
        elif (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            files = [directory / name for name in sorted(set(weight_map.values()))]
        if files:
            tensors: Tensors = {}
            for file in files:
                tensors.update(loader(file))
            return tensors
    raise ConversionError(f"no weights in {directory} (model.safetensors, pytorch_model.bin or their shard indexes)")


# ------------------------------------------------------------------------------------------------
# Name mapping: official name -> our name, or None when it maps to nothing.

_EVA_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_EVA_BLOCK_PARTS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_EVA_TOP = {
    "cls_token": "vision_model.embeddings.class_embedding",
    "pos_embed": "vision_model.embeddings.position_embedding",
    "patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
}
_LION_PREFIXES = (
    ("ln_vision.", "vision_model.post_layernorm."),
    ("t5_proj.", "language_projection."),
    ("fusion_adapter.", "aggregator."),
    ("ln_adapter.", "ln_adapter."),
    ("adapter_proj.", "adapter_proj."),
    ("t5_model.", "language_model."),
)
_LION_EXACT = {"query_tokens": "query_tokens", "soft_prompt_hint": "soft_prompt_hint"}


def _eva_name(name: str) -> str | None:
    """EVA ViT names (q_bias / v_bias are merged separately)."""
    if name in _EVA_TOP:
        return _EVA_TOP[name]
    match = _EVA_BLOCK.fullmatch(name)
    if match:
        index, rest = match.groups()
        for part, ours in _EVA_BLOCK_PARTS.items():
            if rest.startswith(part + "."):
                return f"vision_model.encoder.layers.{index}.{ours}{rest[len(part):]}"
    return None


def _qformer_name(name: str) -> str:
    """LAVIS `Qformer.bert.*` -> transformers `qformer.*` (what transformers' InstructBLIP
    conversion does: `Qformer.bert` -> `qformer`, `attention.self` -> `attention.attention`)."""
    name = "qformer." + name[len("Qformer.bert.") :]
    name = name.replace("embeddings.LayerNorm.", "embeddings.layernorm.")
    return re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", name)


def _lion_name(name: str) -> str | None:
    if name in _LION_EXACT:
        return _LION_EXACT[name]
    if name.startswith("Qformer.bert."):
        return _qformer_name(name)
    for official, ours in _LION_PREFIXES:
        if name.startswith(official):
            return ours + name[len(official) :]
    return None


# ------------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Mapped:
    """One source's tensors under our names, plus what it could not or would not map."""

    label: str
    tensors: Tensors = field(default_factory=dict)  # by our name
    origin: dict[str, str] = field(default_factory=dict)  # our name -> source name
    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def add(self, ours: str, source_name: str, tensor: torch.Tensor) -> None:
        self.tensors[ours], self.origin[ours] = tensor, source_name


def _map_eva(label: str, tensors: Tensors, depth: int, unwrap: Callable[[str], str | None]) -> _Mapped:
    """EVA tensors whose names `unwrap` turns into EVA names (None: not an EVA tensor)."""
    out = _Mapped(label)
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for source_name, tensor in tensors.items():
        name = unwrap(source_name)
        if name is None:
            out.unmapped.append(source_name)
            continue
        block = _EVA_BLOCK.fullmatch(name)
        if block and int(block.group(1)) >= depth:
            out.dropped.append(f"{label}:{source_name} (ViT block beyond depth {depth})")
            continue
        if block and block.group(2) in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(block.group(1), {})[block.group(2)[5]] = tensor
            continue
        ours = _eva_name(name)
        if ours is None:
            out.unmapped.append(source_name)
        else:
            out.add(ours, source_name, tensor)
    for index, parts in biases.items():
        if set(parts) != {"q", "v"}:
            raise ConversionError(f"{label}: ViT block {index} has only one of attn.q_bias / attn.v_bias")
        q, v = parts["q"], parts["v"]
        out.add(
            f"vision_model.encoder.layers.{index}.self_attn.qkv.bias",
            f"blocks.{index}.attn.q_bias+v_bias",
            torch.cat([q, torch.zeros_like(v), v]),
        )
    return out


def _map_t5(label: str, tensors: Tensors, prefix: str = "") -> _Mapped:
    out = _Mapped(label)
    for name, tensor in tensors.items():
        inner = name[len(prefix) :]
        if inner in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            out.dropped.append(f"{label}:{name} (tied to shared.weight)")
        else:
            out.add("language_model." + inner, name, tensor)
    return out


def _map_lion(label: str, tensors: Tensors, depth: int) -> list[_Mapped]:
    """The LION .pth: its ViT part, its T5 part and LION's own modules."""
    vit = {k: v for k, v in tensors.items() if k.startswith("visual_encoder.")}
    t5 = {k: v for k, v in tensors.items() if k.startswith("t5_model.")}
    own = _Mapped(label)
    for name, tensor in tensors.items():
        if name in vit or name in t5:
            continue
        if name == "Qformer.bert.embeddings.position_ids":
            if not torch.equal(tensor.flatten(), torch.arange(tensor.numel(), dtype=tensor.dtype)):
                raise ConversionError(f"{label}:{name} is not 0, 1, 2, ...: this Q-Former cannot be represented")
            own.dropped.append(f"{label}:{name} (rebuilt at load)")
            continue
        ours = _lion_name(name)
        if ours is None:
            own.unmapped.append(name)
        else:
            own.add(ours, name, tensor)
    strip = len("visual_encoder.")
    return [_map_eva(label, vit, depth, lambda n: n[strip:]), _map_t5(label, t5, "t5_model."), own]


# ------------------------------------------------------------------------------------------------
# Config and tokenizers


def _copy_tokenizer(source: Path, target: Path) -> None:
    files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not files:
        raise ConversionError(f"no tokenizer files in {source} (expected some of {', '.join(TOKENIZER_FILES)})")
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(file, target / file.name)


def load_overrides(path: str | Path) -> dict[str, Any]:
    """A (partial) config.json for `ConvertConfig.overrides`; checked for fields when laid over."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConversionError(f"cannot read the config {path}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"the config {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"the config {path} holds a JSON {type(data).__name__}, not an object of fields")
    return data


def base_config(t5_config: Mapping[str, Any], options: ConvertConfig) -> LionConfig:
    """The architecture before the inputs fill in T5's shape and the vocabularies: the preset,
    with `options.overrides` laid over it."""
    preset = options.preset or PRESET_BY_D_MODEL.get(t5_config.get("d_model"))
    if preset is None:
        raise ConversionError(
            f"cannot tell the LION size from FlanT5 d_model {t5_config.get('d_model')}: pass a preset "
            "(the base the config overrides are laid over)"
        )
    try:
        return LionConfig.preset(preset).overlay(options.overrides)
    except ValueError as exc:
        raise ConversionError(f"the config overrides do not fit: {exc}") from exc


def build_config(
    t5_config: Mapping[str, Any],
    base: LionConfig,
    soft_prompt_token_id: int,
    qformer_vocab_size: int,
    has_lm_head: bool,
    overrides: Mapping[str, Any] | None = None,
) -> LionConfig:
    """`base` with T5's shape from FlanT5's config.json and the vocabularies' sizes;
    `dense_act_fn` stays the base's (exact GELU: the LAVIS / LION override of FlanT5's gelu_new).

    Whether lm_head is tied to the embeddings follows the weights (FlanT5 ships its own lm_head),
    not config.json: transformers 5 writes `tie_word_embeddings: true` for every T5 it saves.
    A field of `overrides` (what the user asked for) that the inputs decide otherwise is an error.
    """
    if t5_config.get("model_type") != "t5":
        raise ConversionError(f"the FlanT5 config.json has model_type {t5_config.get('model_type')!r}, not 't5'")
    t5_fields = (
        "vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_layers", "num_decoder_layers",
        "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
        "layer_norm_epsilon", "feed_forward_proj", "pad_token_id", "eos_token_id", "decoder_start_token_id",
    )  # fmt: skip
    decided = {
        "language": {
            **{name: t5_config[name] for name in t5_fields if t5_config.get(name) is not None},
            "tie_word_embeddings": not has_lm_head,
            "soft_prompt_token_id": soft_prompt_token_id,
        },
        "qformer": {"vocab_size": qformer_vocab_size},
    }
    overrides = overrides or {}
    conflicts = [
        f"{section}.{name}: the config says {overrides[section][name]!r}, the inputs {value!r}"
        for section, fields in decided.items()
        for name, value in fields.items()
        if isinstance(overrides.get(section), Mapping)
        and name in overrides[section]
        and overrides[section][name] != value
    ]
    if conflicts:
        raise ConversionError(_listing("config fields the inputs decide otherwise (drop them)", conflicts))
    language = dataclasses.replace(base.language, **decided["language"])
    qformer = dataclasses.replace(base.qformer, **decided["qformer"])
    return dataclasses.replace(base, language=language, qformer=qformer)


def official_dtypes(model: LionModel) -> dict[str, torch.dtype]:
    """The dtype of each of `model`'s tensors in the official model after its CUDA load, which is
    what `dtype="mixed"` stores (lion-model.md §1.1, §1.4, §1.5; LAVIS / LION `eva_vit.py`,
    `lion_t5.py`, `lion_adapters.py`):

    * ViT: `convert_weights_to_fp16` halves the weight and bias of its nn.Conv2d / nn.Linear
      modules only. Its LayerNorms, cls_token, pos_embed and the attention's q_bias / v_bias
      (plain parameters in EVA, our qkv bias) stay float32.
    * T5: `from_pretrained(torch_dtype=bfloat16)`, every tensor (LION's copy of the T5 code has no
      `_keep_in_fp32_modules`).
    * float32: the adapters and routers (added to T5 after that load), ln_vision and everything
      else LION builds (Q-Former, query tokens, projections, aggregator, soft prompt).
    """
    dtypes = {
        name: torch.bfloat16 if parameter_group(name) == "t5" else torch.float32
        for name in model.checkpoint_tensors()
    }
    for prefix, module in model.vision_model.named_modules(prefix="vision_model"):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            dtypes[f"{prefix}.weight"] = torch.float16
            if module.bias is not None and not prefix.endswith(".self_attn.qkv"):
                dtypes[f"{prefix}.bias"] = torch.float16
    return dtypes


# ------------------------------------------------------------------------------------------------
# Conversion


def convert(
    lion_path: str | Path,
    eva_path: str | Path,
    flan_t5_dir: str | Path,
    bert_dir: str | Path,
    output: str | Path,
    options: ConvertConfig = ConvertConfig(),
) -> ConversionReport:
    """Write the model directory `output` from the official files; see the module docstring."""
    from lion_ros.tokenization import LionTokenizers  # transformers' tokenizers: only when converting

    flan_t5_dir, bert_dir, output = Path(flan_t5_dir), Path(bert_dir), Path(output)
    if not (flan_t5_dir / "config.json").is_file():
        raise ConversionError(f"no config.json in the FlanT5 directory {flan_t5_dir}")
    t5_config = json.loads((flan_t5_dir / "config.json").read_text())
    base = base_config(t5_config, options)  # before anything is written: a bad config fails early
    _copy_tokenizer(flan_t5_dir, output / "tokenizer")
    _copy_tokenizer(bert_dir, output / "qformer_tokenizer")
    tokenizers = LionTokenizers.load(output)
    tokenizers.save(output)  # normalised, with [DEC] written into the Q-Former tokenizer

    depth = base.vision.num_hidden_layers
    sources = [
        _map_eva("eva", load_torch_weights(eva_path), depth, lambda name: name),
        _map_t5("flan_t5", load_hf_weights(flan_t5_dir)),
        *_map_lion("lion", load_torch_weights(lion_path), depth),
    ]
    has_lm_head = any("language_model.lm_head.weight" in source.tensors for source in sources)
    config = build_config(
        t5_config, base, tokenizers.tag_token_id, len(tokenizers.qformer), has_lm_head, options.overrides
    )

    with torch.device("meta"):
        model = LionModel(config)
    expected = model.checkpoint_tensors()
    report = ConversionReport(output=output, config=config, tensors=len(expected))
    merged: Tensors = {}
    unexpected: list[str] = []
    for source in sources:
        report.dropped += source.dropped
        unexpected += [f"{source.label}:{name}" for name in source.unmapped]
        for name, tensor in source.tensors.items():
            if name not in expected:
                unexpected.append(f"{source.label}:{source.origin[name]} (-> {name}, not in this model)")
                continue
            if name in merged:
                report.overridden.append(name)
            merged[name] = tensor

    missing = sorted(set(expected) - set(merged))
    report.allowed_missing = [n for n in missing if _matches(n, options.allow_missing)]
    report.allowed_unexpected = [n for n in unexpected if _allowed_source(n.split(" ")[0], options.allow_unexpected)]
    errors = []
    if len(missing) > len(report.allowed_missing):
        errors.append(_listing("missing (no source provides them)", sorted(set(missing) - set(report.allowed_missing))))
    if len(unexpected) > len(report.allowed_unexpected):
        not_allowed = sorted(set(unexpected) - set(report.allowed_unexpected))
        errors.append(_listing("unexpected (they map to nothing)", not_allowed))
    shapes = [
        f"{name}: source {tuple(tensor.shape)}, model {tuple(expected[name].shape)}"
        for name, tensor in merged.items()
        if tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    if shapes:
        errors.append(_listing("wrong shapes", shapes))
    if errors:
        raise ConversionError("cannot convert: " + "\n".join(errors))

    if report.allowed_missing:
        torch.manual_seed(0)
        initial = LionModel(config).checkpoint_tensors()
        merged.update({name: initial[name].detach() for name in report.allowed_missing})
    dtypes = official_dtypes(model) if options.dtype == "mixed" else dict.fromkeys(merged, DTYPES[options.dtype])
    merged = {
        name: tensor.to(dtypes[name]).contiguous() if tensor.is_floating_point() else tensor
        for name, tensor in merged.items()
    }
    model.load_state_dict(merged, strict=False, assign=True)
    model.tie_embeddings()
    model.save_pretrained(output, max_shard_bytes=options.max_shard_bytes)
    return report


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _allowed_source(labelled: str, patterns: tuple[str, ...]) -> bool:
    """A pattern matches a source name with its "source:" label or without."""
    return _matches(labelled, patterns) or _matches(labelled.split(":", 1)[1], patterns)


def _listing(title: str, names: list[str]) -> str:
    return f"  {title} ({len(names)}):\n" + "\n".join(f"    {name}" for name in names)
