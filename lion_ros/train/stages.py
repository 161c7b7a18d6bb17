"""The training stages: which visual path each builds, what it trains, where it starts from.

Paper (LION notes §4), with ViT and T5 frozen throughout stages 1-3:

    stage 1  image-level data   visual_input qformer     trains Q-Former branch + image-level adapter
    stage 2  region-level data  visual_input aggregator  trains aggregator + MLP + region-level adapter
    stage 3  both (per-sample routing)  visual_input all  trains both branches, both adapters,
                                                          router gates and the soft prompt

`stage0` exists for models without pretrained weights (lion-nano): it trains ViT, T5, both
branches and the soft prompt end-to-end on mixed data, which stands in for EVA-CLIP / FlanT5 /
InstructBLIP pretraining. Its adapters stay at their zero initialisation and frozen, so the
fresh adapters of stages 1 and 2 start from exactly the stage-0 function, as LION's adapters
start from FlanT5's. `mixed` is the one-stage baseline: the stage-3 trainable set on the
"all" model, started directly from the stage-0 weights with fresh adapters.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lion_ros.api import TaskKind
from lion_ros.model.adapters import MixtureOfAdapters
from lion_ros.model.config import LionConfig
from lion_ros.model.lion import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, LionModel, parameter_group
from lion_ros.tokenization import LionTokenizers

from .config import TrainConfig

log = logging.getLogger(__name__)

VISUAL_INPUT = {"stage0": "all", "stage1": "qformer", "stage2": "aggregator", "stage3": "all", "mixed": "all"}

# `parameter_group` names. ln_vision feeds only the Q-Former, so it belongs to the image branch;
# the soft prompt is shared by both branches, so only the joint stages train it.
TRAINABLE_GROUPS: dict[str, frozenset[str]] = {
    "stage0": frozenset({"vit", "ln_vision", "qformer", "aggregator", "soft_prompt", "t5"}),
    "stage1": frozenset({"ln_vision", "qformer", "adapters"}),
    "stage2": frozenset({"aggregator", "adapters"}),
    "stage3": frozenset({"ln_vision", "qformer", "aggregator", "adapters", "router", "soft_prompt"}),
    "mixed": frozenset({"ln_vision", "qformer", "aggregator", "adapters", "router", "soft_prompt"}),
}

# Stages 1 and 2 start the adapters and router gates fresh instead of reading them from stage 0.
_FRESH_IN_STAGES = frozenset({"adapters", "router"})

# What stages 1 and 2 read of the stage-0 model besides the ViT and T5 they keep frozen: the groups
# stages 1-3 train, which a trained model no longer holds at their stage-0 values.
STAGE0_OVERLAY_GROUPS = (
    TRAINABLE_GROUPS["stage1"] | TRAINABLE_GROUPS["stage2"] | TRAINABLE_GROUPS["stage3"]
) - _FRESH_IN_STAGES

# Stage 3 takes each branch from the stage that trained it; ViT, T5 and the soft prompt were
# frozen in both stages, so they must agree and are taken from the image stage.
_FROM_IMAGE_STAGE = frozenset({"vit", "ln_vision", "qformer", "soft_prompt", "t5"})
_FROM_REGION_STAGE = frozenset({"aggregator"})
_SHARED_FROZEN = frozenset({"vit", "t5", "soft_prompt"})
_ADAPTER_KEY = ".adapter.adapters."


def apply_freeze_policy(model: LionModel, stage: str) -> dict[str, int]:
    """Set requires_grad by parameter group; returns trainable parameter counts per group."""
    groups = TRAINABLE_GROUPS[stage]
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name)
        param.requires_grad_(group in groups)
        if group in groups:
            counts[group] = counts.get(group, 0) + param.numel()
    return counts


def skip_idle_adapters(model: LionModel) -> int:
    """Turn off every adapter mixture that is frozen with zero up-projections (stage 0's): it adds
    exactly 0 to T5's residual stream and passes exactly 0 gradient back, so skipping it changes
    no result, only the time. Returns how many were turned off (call after `apply_freeze_policy`)."""
    skipped = 0
    for module in model.modules():
        if not isinstance(module, MixtureOfAdapters):
            continue
        frozen = not any(param.requires_grad for param in module.parameters())
        zero = all(not adapter.up_proj.weight.any() and not adapter.up_proj.bias.any() for adapter in module.adapters)
        module.enabled = not (frozen and zero)
        skipped += not module.enabled
    return skipped


def set_train_mode(model: torch.nn.Module, lion: LionModel, stage: str) -> None:
    """train() everywhere except a frozen ViT, which the official code keeps in eval mode (T5
    keeps its dropout while frozen, as in LAVIS)."""
    model.train()
    if "vit" not in TRAINABLE_GROUPS[stage]:
        lion.vision_model.eval()


def build_model(config: TrainConfig, tokenizers: LionTokenizers) -> LionModel:
    """The stage's model with its initial weights (before freezing and wrapping)."""
    visual_input = VISUAL_INPUT[config.stage]
    init = config.init
    if init.kind == "handover":
        model = handover(Path(init.image_stage), Path(init.region_stage))
    else:
        if init.kind == "scratch":
            lion_config = _config_for_tokenizers(LionConfig.preset(config.model.preset), tokenizers)
        else:
            lion_config = LionConfig.load(Path(init.path) / CONFIG_NAME)
        lion_config = dataclasses.replace(
            lion_config, visual_input=visual_input, dtype_policy=config.model.dtype_policy
        )
        model = LionModel(lion_config)
        if init.kind == "scratch":
            _scale_untied_lm_head(model)
            _sincos_position_embedding(model)
        if init.kind == "pretrained":
            overlay = Path(init.overlay) if init.overlay else None
            loaded, fresh = load_matching(model, Path(init.path), skip_groups=init.skip_groups, overlay=overlay)
            log.info("init from %s%s: %d tensors loaded, fresh: %s", init.path,
                     f" + {init.overlay}" if overlay else "", len(loaded), _summary(fresh))
    _check_tokenizers(model.config, tokenizers)
    return model


def handover(image_stage: Path, region_stage: Path) -> LionModel:
    """The stage-3 model: two adapters per FFN, adapters[0] (router row REGION) from the stage-2
    model, adapters[1] (row IMAGE) from the stage-1 model, one-hot gates, the Q-Former branch
    from stage 1 and the aggregator branch from stage 2.

    The official code initialises the gates one-hot but never released this hand-over.
    """
    image_config = LionConfig.load(image_stage / CONFIG_NAME)
    region_config = LionConfig.load(region_stage / CONFIG_NAME)
    if (image_config.visual_input, region_config.visual_input) != ("qformer", "aggregator"):
        raise ValueError(
            f"hand-over needs a qformer (stage 1) and an aggregator (stage 2) model, got "
            f"{image_config.visual_input!r} and {region_config.visual_input!r}"
        )
    if dataclasses.replace(image_config, visual_input="all") != dataclasses.replace(region_config, visual_input="all"):
        raise ValueError("stage-1 and stage-2 models have different architectures")
    model = LionModel(dataclasses.replace(image_config, visual_input="all"))
    targets = model.checkpoint_tensors()
    image, region = _read_tensors(image_stage), _read_tensors(region_stage)

    for name, tensor in image.items():
        group = parameter_group(name)
        if group in _SHARED_FROZEN and not torch.equal(tensor, region[name]):
            raise ValueError(f"{name} differs between the stage-1 and stage-2 models; ViT, T5 and the "
                             "soft prompt must be frozen and identical in both")
    placed = set()
    with torch.no_grad():
        for source, groups, row in (
            (image, _FROM_IMAGE_STAGE, TaskKind.IMAGE),
            (region, _FROM_REGION_STAGE, TaskKind.REGION),
        ):
            for name, tensor in source.items():
                if _ADAPTER_KEY in name:
                    # The single adapter of a stage model is adapters.0; it becomes adapters.<row>.
                    prefix, rest = name.split(_ADAPTER_KEY)
                    target = f"{prefix}{_ADAPTER_KEY}{int(row)}{rest[1:]}"
                elif parameter_group(name) in groups:
                    target = name
                else:
                    continue
                targets[target].copy_(tensor)
                placed.add(target)
        for module in model.modules():
            if hasattr(module, "reset_gates"):
                module.reset_gates()
    gates = {name for name in targets if parameter_group(name) == "router"}
    missing = set(targets) - placed - gates
    if missing:
        raise ValueError(f"hand-over left tensors uninitialised: {sorted(missing)[:5]} ...")
    return model


def load_matching(
    model: LionModel, directory: Path, skip_groups: Iterable[str] = (), overlay: Path | None = None
) -> tuple[list[str], list[str]]:
    """Copy the tensors of a checkpoint whose names and shapes match; the rest keep their init.

    `overlay`: a safetensors file whose tensors replace the checkpoint's first; each must be one
    of the checkpoint's, with its shape. Returns (loaded names, names left at their initialisation).
    """
    skip = set(skip_groups)
    source = _read_tensors(directory)
    if overlay is not None:
        source.update(_checked_overlay(overlay, source))
    loaded, fresh = [], []
    with torch.no_grad():
        for name, target in model.checkpoint_tensors().items():
            tensor = source.get(name)
            if parameter_group(name) in skip or tensor is None or tensor.shape != target.shape:
                fresh.append(name)
                continue
            target.copy_(tensor)
            loaded.append(name)
    return loaded, fresh


def _checked_overlay(path: Path, checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"init.overlay {path} does not exist")
    try:
        overlay = load_file(path)
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"init.overlay {path} is not a readable safetensors file: {error}") from error
    for name, tensor in overlay.items():
        if name not in checkpoint:
            raise ValueError(f"init.overlay {path}: {name} is not a tensor of the checkpoint it overlays")
        if tensor.shape != checkpoint[name].shape:
            raise ValueError(f"init.overlay {path}: {name} has shape {tuple(tensor.shape)}, "
                             f"the checkpoint's is {tuple(checkpoint[name].shape)}")
    return overlay


def stage0_overlay(stage0: Path, trained: Path) -> dict[str, torch.Tensor]:
    """What a model that stages 1-3 trained from `stage0` lacks to stand in for it as the start of
    stages 1 and 2 (`init.overlay`): the stage-0 tensors of the groups stages 1-3 train. Adapters
    and gates are left out (stages 1 and 2 start them fresh); every other tensor (ViT, T5) must be
    the same in both, which stages 1-3 guarantee by keeping them frozen, or this raises.
    """
    configs = [dataclasses.replace(LionConfig.load(d / CONFIG_NAME), visual_input="all") for d in (stage0, trained)]
    if configs[0] != configs[1]:
        raise ValueError(f"{stage0} and {trained} have different architectures")
    start, end = _read_tensors(stage0), _read_tensors(trained)
    overlay = {}
    for name, tensor in start.items():
        group = parameter_group(name)
        if group in STAGE0_OVERLAY_GROUPS:
            overlay[name] = tensor
        elif group not in _FRESH_IN_STAGES and not torch.equal(tensor, end[name]):
            raise ValueError(f"{name} ({group}) differs between {stage0} and {trained}: stages 1-3 keep it "
                             f"frozen, so {trained} was not trained from {stage0}")
    return overlay


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / WEIGHTS_INDEX_NAME
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS_NAME]
    tensors = {}
    for filename in files:
        with safe_open(directory / filename, framework="pt") as f:
            names = f.keys()  # safe_open objects are not iterable
            tensors.update((name, f.get_tensor(name)) for name in names)
    return tensors


@torch.no_grad()
def _scale_untied_lm_head(model: LionModel) -> None:
    """transformers initialises an untied T5 lm_head with std 1, which suits loading FlanT5 but
    gives logits of std ~sqrt(d_model) from scratch (initial loss ~80 instead of ~ln(vocab));
    std d_model**-0.5 starts near uniform predictions."""
    if not model.config.language.tie_word_embeddings:
        model.language_model.lm_head.weight.normal_(std=model.config.language.d_model**-0.5)


@torch.no_grad()
def _sincos_position_embedding(model: LionModel) -> None:
    """Start a from-scratch ViT's (learned) position embedding at the 2-D sine-cosine table
    of MAE. transformers draws it with std 0.02, far below the patch embedding's output, so
    where a patch lies is barely visible to the layers above and box answers must wait for the
    ViT to learn it; the table makes row and column readable from step 1. The CLS slot stays
    zero. Half the channels encode the column, half the row, each as sin/cos pairs over
    geometric frequencies."""
    vision = model.config.vision
    grid, width = vision.patch_grid, vision.hidden_size
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine position table needs a ViT width divisible by 4, got {width}")
    frequencies = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    angles = [axis.flatten()[:, None] * frequencies[None] for axis in (cols, rows)]
    table = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)  # [grid*grid, width]
    embedding = model.vision_model.embeddings.position_embedding  # [1, 1 + grid*grid, width]
    embedding.zero_()
    embedding[0, 1:] = table.to(embedding.dtype)


def _config_for_tokenizers(config: LionConfig, tokenizers: LionTokenizers) -> LionConfig:
    """A from-scratch model sized for its tokenizers (the vocabulary sizes are upper bounds in
    the nano preset: the Unigram trainer keeps fewer pieces on a small corpus)."""
    return dataclasses.replace(
        config,
        language=dataclasses.replace(
            config.language, vocab_size=len(tokenizers.t5), soft_prompt_token_id=tokenizers.tag_token_id
        ),
        qformer=dataclasses.replace(config.qformer, vocab_size=len(tokenizers.qformer)),
    )


def _check_tokenizers(config: LionConfig, tokenizers: LionTokenizers) -> None:
    if len(tokenizers.t5) > config.language.vocab_size or len(tokenizers.qformer) > config.qformer.vocab_size:
        raise ValueError("the tokenizers have more tokens than the model's embedding tables")
    if tokenizers.tag_token_id != config.language.soft_prompt_token_id:
        raise ValueError(
            f"the tokenizer's <extra_id_0> is {tokenizers.tag_token_id} but the model's soft-prompt "
            f"token id is {config.language.soft_prompt_token_id}"
        )


def _summary(names: list[str]) -> str:
    groups: dict[str, int] = {}
    for name in names:
        groups[parameter_group(name)] = groups.get(parameter_group(name), 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())) or "none"
