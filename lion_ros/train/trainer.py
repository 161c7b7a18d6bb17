"""The training loop: one stage, one process or many (torchrun: DDP or FSDP).

Output directory layout:
    <output_dir>/train_config.yaml    the resolved configuration
    <output_dir>/log.csv              step, losses, lr, grad norm, throughput (rank 0)
    <output_dir>/tb/                  TensorBoard scalars (rank 0)
    <output_dir>/checkpoints/step-N/  a model directory (below) + trainer_state.pt, rng-rank*.pt
    <output_dir>/model/               the final model, written only by a run that finished
    <output_dir>/model-partial/       the model of a run run.max_minutes stopped before optim.steps
    <output_dir>/best/                the best model on data.val_files by run.best_metric (best.json)
    <output_dir>/val/step-N/          lion-eval's report on data.val_files after step N
A model directory (`saving.save_model_dir`) holds config.json, the weights, the tokenizers,
generation_config.json (the starting model's decoding settings) and train_config.yaml.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lion_ros.api import TaskKind
from lion_ros.eval.cli import HEADLINE
from lion_ros.model.lion import ImageFeatures, LionModel
from lion_ros.tokenization import LionTokenizers

from . import distributed as dist_utils
from .config import OptimSection, TrainConfig
from .data import (
    STAGE_TASKS,
    BatchStream,
    Collator,
    FileBatches,
    ImageBatches,
    SyntheticBatches,
    TrainBatch,
    patch_classes,
    patch_targets,
)
from .saving import save_model_dir
from .stages import apply_freeze_policy, build_model, set_train_mode, skip_idle_adapters
from .tokenizer_training import prepare_tokenizers
from .validation import BEST_DIR, Validation

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "model"
PARTIAL_DIR = "model-partial"
STATE_NAME = "trainer_state.pt"


class TrainingModule(nn.Module):
    """Per-token losses for a `TrainBatch`; the module DDP/FSDP wrap.

    The ViT and the aggregator run once per image and their features are gathered for each
    question, so several questions about one image cost one image encoding. With
    `length_groups` > 1 the questions are sorted by answer length and T5 runs once per group,
    each padded only to its own longest prompt and answer: a batch mixing "yes" with a
    130-token grounded caption otherwise pads every row to 130. The loss is unchanged.
    """

    def __init__(self, lion: LionModel, length_groups: int = 1, dense_classes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.lion = lion
        self.length_groups = length_groups
        # data.dense_supervision: a linear probe from the ViT's output tokens to per-patch labels
        # (`dense_classes` classes per label column, `data.patch_classes`); training only.
        self.dense_classes = dense_classes
        self.probe = nn.Linear(lion.config.vision.hidden_size, sum(dense_classes)) if dense_classes else None

    def forward(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L] per-token answer losses, the mean dense-supervision loss: 0 where it is off)."""
        features = self.lion.encode_image(batch.pixel_values)
        token_loss = batch.labels.new_zeros(batch.labels.shape, dtype=torch.float32)
        for rows in self._groups(batch.labels):
            group_loss = self._question_loss(batch, rows, features)  # [rows, the group's longest answer]
            token_loss[rows, : group_loss.shape[1]] = group_loss
        dense_loss = token_loss.new_zeros(())
        if self.probe is not None:
            if batch.patch_labels is None or features.qformer_input is None:
                raise ValueError("dense supervision needs patch labels and the ViT output (visual_input all/qformer)")
            dense_loss = self._dense_loss(features.qformer_input[:, 1:], batch.patch_labels)  # drop CLS
        return token_loss, dense_loss

    def _dense_loss(self, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the labels of the per-patch cross-entropy; patches [I, P, D], labels [I, P, K]."""
        logits = self.probe(patches.float()).split(self.dense_classes, dim=-1)
        return torch.stack([F.cross_entropy(kind.flatten(0, 1), labels[..., i].flatten())
                            for i, kind in enumerate(logits)]).mean()

    def _groups(self, labels: torch.Tensor) -> list[torch.Tensor]:
        lengths = (labels != -100).sum(1)
        order = torch.argsort(lengths, stable=True)
        return [rows for rows in order.tensor_split(min(self.length_groups, len(order))) if len(rows)]

    def _question_loss(self, batch: TrainBatch, rows: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        lion = self.lion
        prompt_length = int(batch.attention_mask[rows].sum(1).max())  # right-padded
        qformer_length = int(batch.qformer_attention_mask[rows].sum(1).max())
        labels = batch.labels[rows]
        labels = labels[:, : int((labels != -100).sum(1).max())]  # right-padded with -100
        image_rows = batch.image_index[rows]
        features = ImageFeatures(*(None if t is None else t.index_select(0, image_rows)
                                   for t in (features.qformer_input, features.aggregator_tokens)))
        out = lion(
            input_ids=batch.input_ids[rows, :prompt_length],
            attention_mask=batch.attention_mask[rows, :prompt_length],
            task_index=batch.task_index[rows],
            image_features=features,
            qformer_input_ids=batch.qformer_input_ids[rows, :qformer_length],
            qformer_attention_mask=batch.qformer_attention_mask[rows, :qformer_length],
            decoder_input_ids=lion.language_model._shift_right(labels),
        )
        # The official loss is the mean over all answer tokens of the batch: sum here, divide
        # by the batch's token count in the caller.
        return F.cross_entropy(out.logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-D parameters (biases, norms, scales, soft prompt) and on the
    router gates, which are per-channel gains like norm weights; decay elsewhere."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith(".bias") or "router_ratio" in name or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LRSchedule:
    """Linear warm-up over `optim.warmup_steps`, then cosine decay to `lr * min_lr_ratio`.

    The decay's progress is the step's share of `optim.steps`; with `optim.schedule: time` it is
    the larger of that and the training time's share of `run.max_minutes`, so that a machine
    slower than planned still finishes the decay inside the cap instead of being cut off with
    the learning rate at its peak (the cap ends the run when either share reaches 1)."""

    def __init__(self, optim: OptimSection, max_minutes: float) -> None:
        self.optim = optim
        self.budget_s = 60 * max_minutes if optim.schedule == "time" else 0.0

    def progress(self, step: int, seconds: float) -> float:
        o = self.optim
        share = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
        if self.budget_s > 0:
            share = max(share, seconds / self.budget_s)
        return min(1.0, max(0.0, share))

    def lr(self, step: int, seconds: float) -> float:
        """Learning rate for step `step` (0-based) after `seconds` of training."""
        o = self.optim
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step, seconds)))
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine)


@dataclass
class TrainResult:
    step: int
    final_loss: float  # mean over ranks at the last logged step
    model_dir: Path | None  # rank 0 only
    seconds: float
    model: LionModel  # this rank's trained model (full weights except under FSDP)
    stopped_by_time: bool = False  # run.max_minutes ended the run before optim.steps
    best_dir: Path | None = None  # rank 0, with run.best_metric


def train(config: TrainConfig) -> TrainResult:
    """Run one stage to `optim.steps` (or `run.max_minutes`) and save the final model."""
    start_time = time.time()
    configure_threads(config.run.threads)
    env = dist_utils.setup(config.run)
    torch.manual_seed(config.run.seed + env.rank)
    out_dir = Path(config.run.output_dir)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "train_config.yaml")

    tokenizers = prepare_tokenizers(config.model, config.data.synthetic, env)
    lion = build_model(config, tokenizers)
    lion.apply_dtype_policy(env.device, config.model.dtype_policy)
    counts = apply_freeze_policy(lion, config.stage)
    if config.model.gradient_checkpointing:
        enable_gradient_checkpointing(lion)
    if config.run.compile:
        compile_stacks(lion)

    resume_dir = find_resume(config.run.resume, out_dir)
    if resume_dir is not None:
        lion.load_checkpoint(resume_dir)  # before wrapping, so FSDP shards the resumed weights
    skipped_adapters = skip_idle_adapters(lion)  # on the weights it resumes from
    lion.to(env.device)
    # The dense probe is made here, after the model moved.
    training_module = build_training_module(lion, config).to(env.device)
    module = dist_utils.wrap(training_module, config.run, env)
    optimizer = torch.optim.AdamW(
        param_groups(module, config.optim.weight_decay), lr=config.optim.lr, betas=config.optim.betas,
        eps=config.optim.eps,
    )
    schedule = LRSchedule(config.optim, config.run.max_minutes)
    step, seconds_before = 0, 0.0  # seconds: this stage's wall time in earlier runs (resume)
    if resume_dir is not None:
        step, seconds_before = load_trainer_state(resume_dir, module, optimizer, env, training_module.probe)
        log.info("resumed from %s at step %d (%.1f min of training before)", resume_dir, step, seconds_before / 60)
    if env.is_main and config.optim.warmup_steps >= config.optim.steps:
        log.warning("optim.warmup_steps (%d) >= optim.steps (%d): the learning rate climbs for the whole run and "
                    "never decays; lower optim.warmup_steps", config.optim.warmup_steps, config.optim.steps)
    if env.is_main and not config.data.val_files and (config.run.val_every or config.run.best_metric):
        log.warning("no data.val_files: nothing is validated (run.val_every, run.best_metric unused)")
    validation = Validation(config, out_dir, resumed=resume_dir is not None) if config.data.val_files and env.is_main \
        else None

    collator = Collator.for_model(tokenizers, config.data, lion.config)
    if config.data.files:
        dataset: ImageBatches = FileBatches(config.data, collator, STAGE_TASKS[config.stage], config.run.seed,
                                            env.rank, env.world_size)
    else:
        dataset = SyntheticBatches(
            config.data, collator, STAGE_TASKS[config.stage], config.run.seed, env.rank, env.world_size,
            patch_grid=lion.config.vision.patch_grid, patch_targets=patch_targets(config.data),
        )
    stream = iter(BatchStream(dataset, step, config.data.num_workers, seed=config.run.seed))
    if env.is_main:
        log.info("stage %s, trainable parameters: %s%s", config.stage, counts,
                 f"; {skipped_adapters} adapter mixtures frozen at zero are skipped" if skipped_adapters else "")
        if isinstance(dataset, FileBatches):
            log.info("training on %d images with %d questions from data.files", len(dataset.images),
                     sum(map(len, dataset.samples.values())))

    logger = MetricLogger(out_dir, enabled=env.is_main, resume_step=step, validation=validation is not None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda" and config.run.bf16)
    set_train_mode(module, lion, config.stage)
    progress = tqdm(total=config.optim.steps, initial=step, disable=not env.is_main, desc=config.stage,
                    dynamic_ncols=True)
    loss_value = float("nan")
    window_start, window_samples = time.time(), 0
    elapsed = seconds_before
    while step < config.optim.steps:
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step, elapsed)
        batch = next(stream).to(env.device)
        # The routers read the task index from the model while T5 runs; holding it through
        # backward lets gradient checkpointing recompute routed blocks.
        with lion.route(batch.task_index):
            with autocast:
                token_loss, dense_loss = module(batch)
            mask = batch.labels != -100
            loss = total_loss(token_loss, dense_loss, mask, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        grad_norm = dist_utils.clip_grad_norm(module, config.optim.grad_clip)
        optimizer.step()
        step += 1
        window_samples += batch.num_questions * env.world_size
        progress.update(1)
        # Every rank takes the slowest one's clock, so they agree on the learning rate and the stop.
        elapsed = dist_utils.max_over_ranks(seconds_before + time.time() - start_time, env)

        if step % config.run.log_every == 0 or step == config.optim.steps:
            stats = _loss_stats(token_loss.detach(), mask, batch.task_index)
            stats["loss_dense"] = float(dense_loss.detach())
            stats = dist_utils.mean_over_ranks(stats, env)
            loss_value = stats["loss"]
            window_s = time.time() - window_start
            stats.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                         samples_per_s=window_samples / max(window_s, 1e-9), elapsed_s=elapsed)
            logger.log(step, stats)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{stats['lr']:.2e}")
            window_start, window_samples = time.time(), 0

        out_of_time = config.run.max_minutes > 0 and elapsed > 60 * config.run.max_minutes
        if validation is not None and validation.due(step, last=out_of_time or step == config.optim.steps):
            logger.log(step, validation.run(step, lion, tokenizers), group="val")
            set_train_mode(module, lion, config.stage)
        if step % config.run.checkpoint_every == 0 or out_of_time:
            save_checkpoint(out_dir, step, elapsed, module, lion, tokenizers, optimizer, config, env,
                            training_module.probe)
        if out_of_time:
            break
    progress.close()
    logger.close()

    stopped_by_time = step < config.optim.steps
    # With optim.schedule time the learning rate has decayed over run.max_minutes: the cap is the
    # run's planned end. Otherwise it cut the run short, and model/ is left to finished runs.
    finished = not stopped_by_time or config.optim.schedule == "time"
    model_dir = out_dir / (FINAL_DIR if finished else PARTIAL_DIR)
    if env.is_main and stopped_by_time:
        log.warning("stopped by time after %d of %d steps (run.max_minutes=%g)%s; the model is in %s. %s", step,
                    config.optim.steps, config.run.max_minutes,
                    ", still warming up" if step < config.optim.warmup_steps else "", model_dir,
                    "optim.schedule time decayed the learning rate over that time, so this is the final model."
                    if finished else f"{FINAL_DIR}/ is left as it was; to go on, raise run.max_minutes and run "
                    "again with run.resume: auto (the checkpoint of this step).")
    with dist_utils.full_weights(module, env):
        if env.is_main:
            save_model_dir(model_dir, lion, tokenizers, config)
    dist_utils.barrier(env)
    # Drop the DDP/FSDP wrapper first: it holds the process group, which would otherwise be
    # destroyed only when this frame unwinds, after the peer may have exited (a rank then hung
    # at exit in the 2-process gloo test). This way every rank destroys it inside teardown.
    del module
    dist_utils.teardown(env)
    best_dir = out_dir / BEST_DIR if validation is not None and config.run.best_metric else None
    return TrainResult(step=step, final_loss=loss_value, model_dir=model_dir if env.is_main else None,
                       seconds=time.time() - start_time, model=lion, stopped_by_time=stopped_by_time,
                       best_dir=best_dir)


def build_training_module(lion: LionModel, config: TrainConfig) -> TrainingModule:
    """The stage's training module, with dense supervision when `data.dense_supervision` turns it on."""
    return TrainingModule(lion, config.data.length_groups, patch_classes(config.data))


def total_loss(token_loss: torch.Tensor, dense_loss: torch.Tensor, mask: torch.Tensor,
               config: TrainConfig) -> torch.Tensor:
    """The loss a step minimises: the answer loss of the [B, L] per-token losses and their mask,
    plus the dense-supervision loss times its `data.dense_supervision` weight."""
    return answer_loss(token_loss, mask, config.optim.loss_average) + config.data.dense_supervision * dense_loss


def answer_loss(token_loss: torch.Tensor, mask: torch.Tensor, average: str) -> torch.Tensor:
    """The batch's answer loss from [B, L] per-token losses and their mask (`optim.loss_average`)."""
    if average == "question":
        return (token_loss.sum(1) / mask.sum(1).clamp(min=1)).mean()
    return token_loss.sum() / mask.sum()


def enable_gradient_checkpointing(lion: LionModel) -> None:
    """Recompute ViT, Q-Former and T5 layer activations in backward (transformers' layers)."""
    for name in ("vision_model", "qformer", "language_model"):
        part = getattr(lion, name, None)
        if part is not None:
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_stacks(lion: LionModel) -> None:
    """torch.compile the model's transformer stacks in place, so parameter names (checkpoints,
    saved models) are unchanged; dynamic shapes, because question and answer lengths change every
    step."""
    # Under DDP, dynamo splits each graph at gradient-bucket boundaries, and with dynamic shapes
    # inductor then fails on the Q-Former's embeddings (torch 2.13: "ValueRangeError: Invalid
    # ranges"); whole graphs compile, and the stacks are small enough that the overlap lost is
    # not measurable here.
    torch._dynamo.config.optimize_ddp = False
    branches = [getattr(lion, name, None) for name in ("qformer", "aggregator")]  # per visual_input
    for stack in (lion.vision_model, *branches, lion.language_model.encoder, lion.language_model.decoder):
        if stack is not None:
            stack.compile(dynamic=True)


def _loss_stats(token_loss: torch.Tensor, mask: torch.Tensor, task_index: torch.Tensor) -> dict[str, float]:
    stats = {"loss": float(token_loss.sum() / mask.sum())}
    for kind in TaskKind:
        rows = task_index == int(kind)
        tokens = mask[rows].sum()
        stats[f"loss_{kind.name.lower()}"] = float(token_loss[rows].sum() / tokens) if tokens > 0 else float("nan")
    return stats


class MetricLogger:
    """CSV + TensorBoard scalars on rank 0."""

    FIELDS = ("step", "loss", "loss_region", "loss_image", "loss_dense", "lr", "grad_norm", "samples_per_s",
              "elapsed_s")

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int, validation: bool = False) -> None:
        """validation: add a val_<metric> column for each of lion-eval's headline metrics."""
        self.enabled = enabled
        if not enabled:
            return
        self.fields = self.FIELDS + (tuple(f"val_{key}" for key in HEADLINE) if validation else ())
        path = out_dir / "log.csv"
        new = resume_step == 0 or not path.exists()
        self.file = path.open("w" if new else "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.fields)
        if new:
            self.csv.writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, stats: dict[str, float | None], group: str = "train") -> None:
        """One log.csv row (columns `<group>_<key>` outside the train group; a validation row
        leaves the training columns empty) and TensorBoard scalars `<group>/<key>`; None values
        (a metric without questions) are left out of both."""
        if not self.enabled:
            return
        prefix = "" if group == "train" else f"{group}_"
        row = {"step": step, **{f"{prefix}{k}": f"{v:.6g}" for k, v in stats.items() if v is not None}}
        self.csv.writerow(row)
        self.file.flush()
        for key, value in stats.items():
            if value is not None and not math.isnan(value):
                self.tb.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def save_checkpoint(
    out_dir: Path, step: int, seconds: float, module: nn.Module, lion: LionModel, tokenizers: LionTokenizers,
    optimizer: torch.optim.Optimizer, config: TrainConfig, env: dist_utils.DistEnv,
    probe: nn.Module | None = None,
) -> None:
    """Model + optimizer + step + the stage's wall time so far + every rank's RNG, then prune old
    checkpoints (the learning rate is a function of step and time, so it needs no state).

    A checkpoint is a whole model directory (`save_model_dir`) that lion-eval and lion-ask can read."""
    ckpt = out_dir / CHECKPOINTS_DIR / f"step-{step:07d}"
    optim_state = dist_utils.optimizer_state(module, optimizer, env)
    with dist_utils.full_weights(module, env):
        if env.is_main:
            save_model_dir(ckpt, lion, tokenizers, config)
            state = {"step": step, "seconds": seconds, "optimizer": optim_state}
            if probe is not None:  # not part of the model, but resuming needs it
                state["probe"] = probe.state_dict()
            torch.save(state, ckpt / STATE_NAME)
    dist_utils.barrier(env)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, ckpt / f"rng-rank{env.rank}.pt")
    dist_utils.barrier(env)
    if env.is_main:
        (ckpt / "DONE").touch()  # a crash mid-save leaves no DONE: such a directory is never resumed
        done = sorted(p for p in (out_dir / CHECKPOINTS_DIR).glob("step-*") if (p / "DONE").exists())
        for old in done[: -config.run.keep_checkpoints]:
            shutil.rmtree(old)


def load_trainer_state(
    ckpt: Path, module: nn.Module, optimizer: torch.optim.Optimizer, env: dist_utils.DistEnv,
    probe: nn.Module | None = None,
) -> tuple[int, float]:
    """Restore what `save_checkpoint` wrote; returns (step, seconds of training before it)."""
    state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)
    if (probe is None) != ("probe" not in state):
        raise ValueError(f"{ckpt} was saved {'without' if probe is not None else 'with'} data.dense_supervision; "
                         "resume it with the same setting")
    if probe is not None:
        if state["probe"]["weight"].shape != probe.weight.shape:
            raise ValueError(f"{ckpt} was saved with other data.dense_targets; resume it with the same ones")
        probe.load_state_dict(state["probe"])
    dist_utils.load_optimizer_state(module, optimizer, state["optimizer"], env)
    rng_file = ckpt / f"rng-rank{env.rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"]), float(state.get("seconds", 0.0))  # older checkpoints: no time


def find_resume(resume: str, out_dir: Path) -> Path | None:
    """`run.resume`: "" (fresh), "auto" (latest complete checkpoint in out_dir, if any) or a path."""
    if not resume:
        return None
    if resume != "auto":
        return Path(resume)
    done = sorted(p for p in (out_dir / CHECKPOINTS_DIR).glob("step-*") if (p / "DONE").exists())
    return done[-1] if done else None


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
