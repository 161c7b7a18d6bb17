"""Training configuration: one YAML file per stage, loaded into these dataclasses.

A file may start from another with `extends: base.yaml` (a path relative to the file): its own
keys are merged over the base's, section by section, so a run that changes three settings of
another says only those three. Command-line overrides use dotted keys (`optim.lr=3e-4
run.output_dir=runs/x`); values are parsed as YAML so numbers, booleans and lists keep their types.

A model or tokenizer path written `package://<path>` is that path inside the installed lion_ros
package (`package://assets/lion-nano` is the shipped lion-nano), so a packaged config runs from
any folder; every other path is relative to the current folder.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lion_ros.data.sources import FileSource
from lion_ros.data.synthetic import SyntheticConfig, patch_label_classes

STAGES = ("stage0", "stage1", "stage2", "stage3", "mixed")
INIT_KINDS = ("scratch", "pretrained", "handover")
DISTRIBUTED_MODES = ("none", "ddp", "fsdp")
SCHEDULES = ("steps", "time")
LOSS_AVERAGES = ("token", "question")
PACKAGE_SCHEME = "package://"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def resolve_package_path(value: str, key: str) -> str:
    """`value` with a leading `package://` replaced by the installed lion_ros package's folder
    (which must then hold it); any other value unchanged. `key` names the setting in errors."""
    if not value.startswith(PACKAGE_SCHEME):
        return value
    path = PACKAGE_DIR / value[len(PACKAGE_SCHEME):]
    if not path.exists():
        raise FileNotFoundError(f"{key}: {value} is not part of the installed lion_ros package ({path} does not exist)")
    return str(path)


@dataclass
class TokenizerTraining:
    """How to build nano tokenizers when `model.tokenizer_dir` does not exist yet."""

    t5_vocab_size: int = 2048
    qformer_vocab_size: int = 2048
    corpus_scenes: int = 2000  # synthetic train scenes whose prompts and answers form the corpus


@dataclass
class ModelSection:
    """Which model to build and with which tokenizers.

    With `init.kind: scratch` the architecture is `preset` with its vocabulary sizes and the
    soft-prompt token id taken from the tokenizers; otherwise it is the init checkpoint's
    `config.json`, with `visual_input` set by the stage.
    """

    preset: str = "lion-nano"
    # Holds tokenizer/ and qformer_tokenizer/. Empty: the starting model's own (init.path, or
    # init.image_stage for a hand-over); a from-scratch run must name it.
    tokenizer_dir: str = ""
    train_tokenizer: TokenizerTraining | None = None  # build tokenizer_dir if missing
    dtype_policy: str = "fp32"  # LionConfig policy for training; "mixed" stores frozen ViT/T5 in half
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.tokenizer_dir = resolve_package_path(self.tokenizer_dir, "model.tokenizer_dir")


@dataclass
class InitSection:
    """Where the weights come from.

    scratch: random init. pretrained: copy every tensor of `path` whose name and shape match,
    except those of `skip_groups` (`parameter_group` names), which keep their fresh init;
    `overlay` (optional) is a safetensors file whose tensors replace those of `path` first. The
    shipped lion-nano keeps its stage-0 branches so (`stage0.safetensors`, `stages.stage0_overlay`):
    with `path` at the shipped model they give stages 1 and 2 the stage-0 model they started from.
    handover: the stage-3 model from the stage-1 (`image_stage`) and stage-2 (`region_stage`)
    models, see `stages.handover`.

    The starting model (`path`, or `image_stage` for a hand-over) also gives the run its
    tokenizers (unless `model.tokenizer_dir` names others) and its decoding settings
    (generation_config.json), which every saved model and checkpoint carries on.
    """

    kind: str = "scratch"
    path: str = ""
    skip_groups: list[str] = field(default_factory=list)
    overlay: str = ""
    image_stage: str = ""
    region_stage: str = ""

    def __post_init__(self) -> None:
        for name in ("path", "overlay", "image_stage", "region_stage"):
            setattr(self, name, resolve_package_path(getattr(self, name), f"init.{name}"))


@dataclass
class DataSection:
    """Batches hold `images_per_batch` images with `questions_per_image` questions each: the
    ViT and the aggregator run once per image, the Q-Former and T5 once per question.

    The images come from the synthetic scene generator, or, when `files` lists dataset files
    (your own scenes: COCO instances, instruction jsonl, or the public formats of
    `lion_ros.data.sources.FORMATS`), from those files only.
    """

    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    files: list[FileSource] = field(default_factory=list)
    # Held-out files in the formats of `files`, scored with lion-eval's metrics every
    # run.val_every steps (see run.best_metric).
    val_files: list[FileSource] = field(default_factory=list)
    num_scenes: int = 100_000  # size of the training scene pool (rendered on the fly)
    images_per_batch: int = 8
    questions_per_image: int = 4
    max_prompt_tokens: int = 128  # official max_txt_len; T5 prompts are cut from the left
    max_target_tokens: int = 128  # official max_output_txt_len; answers are cut from the right
    tag_dropout: float = 0.0  # probability of giving a sample no tags (deployment without a tagger)
    photometric: float = 0.0  # max relative brightness / contrast change; 0 disables
    num_workers: int = 0
    # T5 runs once per group of questions with similar answer lengths (less padding); the
    # groups' T5 passes must not be recomputed in backward, so > 1 excludes gradient checkpointing.
    length_groups: int = 1
    # Stage 0 only: weight of an auxiliary loss that makes the ViT describe the object under every
    # patch (`dense_targets`; see data.synthetic.patch_labels). It stands in for the
    # pretraining a from-scratch ViT lacks; the linear probe it trains is not part of the model.
    dense_supervision: float = 0.0
    # Which per-patch labels (data.synthetic.PATCH_TARGETS): object, box, depth, count.
    dense_targets: list[str] = field(default_factory=lambda: ["object"])


@dataclass
class OptimSection:
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    steps: int = 1000
    grad_clip: float = 1.0
    # steps: the cosine decay spans optim.steps. time: it ends at optim.steps or at run.max_minutes,
    # whichever comes first, so a slower machine trains fewer steps but with the whole decay.
    schedule: str = "steps"
    # token: the answer loss is the mean over all answer tokens of the batch, so a 25-token box or
    # a 130-token caption weighs 25-130 times a one-word answer. question: the mean over questions
    # of each answer's own token mean, so every question weighs the same.
    loss_average: str = "token"


@dataclass
class RunSection:
    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    bf16: bool = True  # autocast on CUDA only
    # torch.compile the five transformer stacks (ViT, Q-Former, aggregator, T5 encoder and
    # decoder) with dynamic shapes: the first steps pay a compile of one to two minutes, then a
    # stage-0 step of lion-nano runs about 1.2x faster on a CPU (bench/bench_train_step.py).
    compile: bool = False
    threads: int = 0  # torch.set_num_threads on CPU; 0 leaves torch's default
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: str = ""  # a checkpoint directory, or "auto" for the latest one in output_dir
    distributed: str = "none"  # none | ddp | fsdp (chosen automatically under torchrun: ddp)
    # Stop after this much wall time; 0 = no limit. A run stopped so before optim.steps saves its
    # model to model-partial/ (model/ is only ever a finished run's), with a checkpoint to resume;
    # with optim.schedule: time the cap is the planned end, and the model goes to model/.
    max_minutes: float = 0.0
    dist_timeout_minutes: float = 30.0  # rendezvous/collective timeout: a lost rank fails the run instead of hanging it
    # With data.val_files: score them every this many steps and at the end (0: at the end only),
    # into log.csv (val_* columns), TensorBoard (val/*) and val/step-N/ (lion-eval's report).
    val_every: int = 0
    # With data.val_files: a lion-eval headline metric (e.g. rec_acc@0.5, counting_acc); the model
    # that scores best on it is kept in best/ (best.json names the step and score). Empty: no best/.
    best_metric: str = ""


@dataclass
class TrainConfig:
    stage: str = "stage0"
    model: ModelSection = field(default_factory=ModelSection)
    init: InitSection = field(default_factory=InitSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.init.kind not in INIT_KINDS:
            raise ValueError(f"init.kind must be one of {INIT_KINDS}, got {self.init.kind!r}")
        if self.run.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"run.distributed must be one of {DISTRIBUTED_MODES}")
        if self.stage == "stage3" and self.init.kind != "handover":
            raise ValueError("stage3 starts from the stage-1 and stage-2 models: set init.kind: handover")
        if self.init.kind == "handover" and not (self.init.image_stage and self.init.region_stage):
            raise ValueError("init.kind handover needs init.image_stage and init.region_stage")
        if self.data.length_groups < 1:
            raise ValueError("data.length_groups must be >= 1")
        if self.data.length_groups > 1 and self.model.gradient_checkpointing:
            # Recomputed T5 blocks would read the whole batch's routing, not their group's.
            raise ValueError("data.length_groups > 1 cannot be combined with model.gradient_checkpointing")
        if self.data.dense_supervision > 0:
            # It trains the ViT from scratch, which only stage 0 does, on labels only synthetic scenes have.
            if self.stage != "stage0":
                raise ValueError("data.dense_supervision trains the ViT from scratch, which only stage0 does")
            if self.data.files:
                raise ValueError("data.dense_supervision needs per-patch labels, which only synthetic scenes have; "
                                 "remove it or data.files")
            patch_label_classes(self.data.dense_targets)  # raises on an unknown or empty list
            if self.run.distributed == "fsdp":
                raise ValueError("data.dense_supervision is not supported with FSDP (its probe is not sharded)")
        if self.optim.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.optim.schedule!r}")
        if self.optim.loss_average not in LOSS_AVERAGES:
            raise ValueError(f"optim.loss_average must be one of {LOSS_AVERAGES}, got {self.optim.loss_average!r}")
        if self.optim.schedule == "time" and self.run.max_minutes <= 0:
            raise ValueError("optim.schedule: time decays over run.max_minutes; set it > 0")
        if self.init.kind == "pretrained" and not self.init.path:
            raise ValueError("init.kind pretrained needs init.path")
        if self.init.overlay and self.init.kind != "pretrained":
            raise ValueError(f"init.overlay replaces tensors of init.path; it needs init.kind pretrained, "
                             f"not {self.init.kind!r}")
        if self.run.val_every < 0:
            raise ValueError(f"run.val_every must be >= 0, got {self.run.val_every}")
        if self.run.best_metric:
            from lion_ros.eval.cli import HEADLINE

            if self.run.best_metric not in HEADLINE:
                raise ValueError(f"run.best_metric must be one of lion-eval's headline metrics {list(HEADLINE)}, "
                                 f"got {self.run.best_metric!r}")
        if self.data.val_files and self.run.distributed == "fsdp":
            raise ValueError("data.val_files is not supported with FSDP (validation answers with rank 0's whole model)")
        if not self.model.tokenizer_dir and self.init.kind != "scratch":
            # One key names the starting model; its tokenizers come with it.
            self.model.tokenizer_dir = self.init.path if self.init.kind == "pretrained" else self.init.image_stage

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return _build(cls, data)

    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        data = read_config_file(Path(path))
        for item in overrides:
            apply_override(data, item)
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict, with the file it `extends` (and that file's base) merged under it."""
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist" + (
            f" (extended by {_chain[-1]})" if _chain else ""))
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"training config {path} is not a mapping of sections")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: extends must be a file name, got {base!r}")
    chain = (*_chain, path.resolve())
    base_path = (path.parent / base).resolve()
    if base_path in chain:
        loop = " -> ".join(p.name for p in (*chain, base_path))
        raise ValueError(f"{path}: extends {base} makes a cycle: {loop}")
    return _merge(read_config_file(base_path, chain), data)


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, anything else (lists included) replaces."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form key.sub=value")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(value)


def _build(cls: type, data: Mapping[str, Any] | None) -> Any:
    """A (nested) dataclass from a dict, rejecting unknown keys so that typos fail loudly."""
    if cls is SyntheticConfig:
        return SyntheticConfig.from_dict(data or {})
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(fields[name].type)
        if sub is not None and value is not None:
            value = _build(sub, value)
        elif isinstance(value, list) and name == "betas":
            value = tuple(value)
        elif isinstance(value, list) and name in ("files", "val_files"):
            if not all(isinstance(item, Mapping) for item in value):
                raise ValueError(f"each data.{name} entry is a mapping with at least 'format' and 'path'")
            value = [_build(FileSource, item) for item in value]
        elif fields[name].type == "float" and isinstance(value, str):
            value = _float(f"{cls.__name__}.{name}", value)
        kwargs[name] = value
    return cls(**kwargs)


def _float(key: str, value: str) -> float:
    """YAML 1.1 reads `1e-3` (no dot in the mantissa) as a string; take it as the number meant."""
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {value!r}") from None


_SECTIONS = {
    c.__name__: c
    for c in (TokenizerTraining, ModelSection, InitSection, DataSection, OptimSection, RunSection, SyntheticConfig)
}


def _dataclass_type(annotation: Any) -> type | None:
    # Annotations are strings under `from __future__ import annotations`: "Section" or "Section | None".
    return _SECTIONS.get(str(annotation).removesuffix(" | None"))
