"""The training loop: one stage, one process or many (torchrun: DDP or FSDP).

Output directory layout:
    <output_dir>/train_config.yaml    the resolved configuration
    <output_dir>/log.csv              step, losses, lr, grad norm, throughput (rank 0)
    <output_dir>/tb/                  TensorBoard scalars (rank 0)
    <output_dir>/checkpoints/step-N/  config.json, model.safetensors, trainer_state.pt, rng-rank*.pt
    <output_dir>/model/               the final model: config.json, model.safetensors, tokenizers
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lion_ros.api import TaskKind
from lion_ros.data.synthetic import OBJECT_LABEL_NAMES, PLURALS, patch_label_classes
from lion_ros.model.lion import ImageFeatures, LionModel
from lion_ros.tokenization import LionTokenizers

from . import distributed as dist_utils
from .config import DataSection, OptimSection, TrainConfig
from .data import STAGE_TASKS, BatchStream, Collator, FileBatches, ImageBatches, SyntheticBatches, TrainBatch
from .stages import apply_freeze_policy, build_model, set_train_mode, skip_idle_adapters
from .tokenizer_training import prepare_tokenizers

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "model"
STATE_NAME = "trainer_state.pt"
# data.* weight of each auxiliary loss -> its log.csv / TensorBoard name.
AUXILIARY_LOSSES = {"dense_supervision": "loss_dense", "attention_supervision": "loss_attention",
                    "dense_words": "loss_words", "word_attention": "loss_word_attention"}


class QFormerAttentionMaps:
    """While active, records the attention probabilities of one Q-Former attention module, for an
    auxiliary loss on where it looks.

    A forward pre-hook recomputes the probabilities from the module's own query and key
    projections and its mask (differentiably) because fused attention kernels do not return them;
    the module's output is untouched. Training only: the hook is removed on exit.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.maps: list[torch.Tensor] = []
        self._handle = None

    def __enter__(self) -> "QFormerAttentionMaps":
        self.maps.clear()
        self._handle = self.module.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        attention = module.attention
        hidden = args[0] if args else kwargs["hidden_states"]
        cross = kwargs.get("encoder_hidden_states") is not None
        keys = kwargs["encoder_hidden_states"] if cross else hidden
        mask = kwargs.get("encoder_attention_mask" if cross else "attention_mask")
        heads, size = attention.num_attention_heads, attention.attention_head_size
        q = attention.query(hidden).unflatten(-1, (heads, size)).transpose(1, 2)  # [B, H, Lq, d]
        k = attention.key(keys).unflatten(-1, (heads, size)).transpose(1, 2)  # [B, H, Lk, d]
        scores = (q @ k.transpose(-1, -2)).float() * attention.scaling
        if mask is not None:  # boolean "may attend" or additive, broadcastable to the scores
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        self.maps.append(torch.softmax(scores, dim=-1))

    def negative_log_share(self, groups: list[torch.Tensor],
                           share: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean over questions of -log of the attention share `share(rows, probs)` gives, as
        ([b] shares, [b] which questions count), for each recorded pass and its rows of `groups`;
        0 when no question counts."""
        if len(self.maps) != len(groups):
            raise RuntimeError(f"recorded {len(self.maps)} Q-Former passes for {len(groups)} question groups")
        losses = []
        for rows, probs in zip(groups, self.maps):
            shares, counted = share(rows, probs)
            losses.append(-torch.log(shares[counted].clamp_min(1e-6)))
        per_question = torch.cat(losses)
        return per_question.mean() if len(per_question) else per_question.new_zeros(())


class QFormerCrossAttention(QFormerAttentionMaps):
    """The maps of the Q-Former's last cross-attention layer (its queries over the ViT tokens) and
    the attention-supervision loss on them."""

    def __init__(self, lion: LionModel) -> None:
        if not lion.config.uses_qformer:
            raise ValueError("attention supervision needs the Q-Former (visual_input all/qformer)")
        layers = [layer for layer in lion.qformer.encoder.layer if layer.has_cross_attention]
        super().__init__(layers[-1].crossattention)

    def evidence_loss(self, groups: list[torch.Tensor], evidence_mask: torch.Tensor) -> torch.Tensor:
        """-log of the mean attention mass (over heads and queries) on each question's evidence
        patches, averaged over the questions that have evidence; groups: the rows of each recorded
        Q-Former pass, in order; evidence_mask [B, P] over the ViT patches (CLS excluded)."""
        def on_evidence(rows: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mask = evidence_mask[rows].to(probs.dtype)  # [b, P]
            mass = (probs[..., 1:] * mask[:, None, None, :]).sum(-1).mean((1, 2))  # drop CLS; [b]
            return mass, mask.sum(-1) > 0

        return self.negative_log_share(groups, on_evidence)


class QFormerWordAttention(QFormerAttentionMaps):
    """The maps of the Q-Former's first self-attention (queries and question text together) and
    the word-attention loss: the queries must first take up the words that name an object before
    the cross-attention can look for it (lion-nano's HISTORY.md, "Where the answer is lost")."""

    def __init__(self, lion: LionModel, word_ids: torch.Tensor) -> None:
        if not lion.config.uses_qformer:
            raise ValueError("data.word_attention needs the Q-Former (visual_input all/qformer)")
        super().__init__(lion.qformer.encoder.layer[0].attention)
        self.num_queries = lion.config.qformer.num_query_tokens
        self.word_ids = word_ids

    def word_loss(self, groups: list[torch.Tensor], qformer_input_ids: torch.Tensor) -> torch.Tensor:
        """-log of the share of the queries' attention (mean over heads and queries) on the
        question's label words, averaged over the questions that have any; groups as in
        `QFormerCrossAttention.evidence_loss`, qformer_input_ids [B, Q] the batch's Q-Former text."""
        queries = self.num_queries

        def on_words(rows: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            text = qformer_input_ids[rows, : probs.shape[-1] - queries]
            words = torch.isin(text, self.word_ids.to(text.device)).to(probs.dtype)  # [b, T]
            share = (probs[:, :, :queries, queries:] * words[:, None, None, :]).sum(-1).mean((1, 2))  # [b]
            return share, words.sum(-1) > 0

        return self.negative_log_share(groups, on_words)


class TrainingModule(nn.Module):
    """Per-token losses for a `TrainBatch`; the module DDP/FSDP wrap.

    The ViT and the aggregator run once per image and their features are gathered for each
    question, so several questions about one image cost one image encoding. With
    `length_groups` > 1 the questions are sorted by answer length and T5 runs once per group,
    each padded only to its own longest prompt and answer: a batch mixing "yes" with a
    130-token grounded caption otherwise pads every row to 130. The loss is unchanged.
    """

    def __init__(self, lion: LionModel, length_groups: int = 1, dense_classes: tuple[int, ...] = (),
                 attention_supervision: bool = False, patch_words: Optional[list[torch.Tensor]] = None,
                 label_word_ids: Optional[torch.Tensor] = None, aggregator_dropout: float = 0.0) -> None:
        """label_word_ids: the Q-Former ids of the words that name objects, for data.word_attention;
        aggregator_dropout: data.aggregator_dropout (applied in training mode only)."""
        super().__init__()
        self.lion = lion
        self.aggregator_dropout = aggregator_dropout
        self.length_groups = length_groups
        self.cross_attention = QFormerCrossAttention(lion) if attention_supervision else None
        self.word_attention = QFormerWordAttention(lion, label_word_ids) if label_word_ids is not None else None
        # A linear probe from the ViT's output tokens to per-patch labels (`dense_classes` classes
        # per label, see data.synthetic.patch_labels); training only.
        self.dense_classes = dense_classes
        self.probe = nn.Linear(lion.config.vision.hidden_size, sum(dense_classes)) if dense_classes else None
        # data.dense_words: the T5 ids of the words for label values 1..n of the first patch-label
        # columns (`patch_word_ids`).
        self.patch_words = patch_words

    def forward(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """([B, L] per-token answer losses, the mean of each auxiliary loss by its data.* weight's
        name (`AUXILIARY_LOSSES`), 0 where it is off)."""
        features = self.lion.encode_image(batch.pixel_values)
        token_loss = batch.labels.new_zeros(batch.labels.shape, dtype=torch.float32)
        groups = self._groups(batch.labels)
        with contextlib.ExitStack() as recording:
            for recorder in (self.cross_attention, self.word_attention):
                if recorder is not None:
                    recording.enter_context(recorder)
            for rows in groups:
                group_loss = self._question_loss(batch, rows, features)  # [rows, the group's longest answer]
                token_loss[rows, : group_loss.shape[1]] = group_loss
        attention_loss = token_loss.new_zeros(())
        if self.cross_attention is not None:
            if batch.evidence_mask is None:
                raise ValueError("attention supervision needs the batch's evidence masks")
            attention_loss = self.cross_attention.evidence_loss(groups, batch.evidence_mask)
        word_attention_loss = token_loss.new_zeros(())
        if self.word_attention is not None:
            word_attention_loss = self.word_attention.word_loss(groups, batch.qformer_input_ids)
        dense_loss = token_loss.new_zeros(())
        if self.probe is not None:
            if batch.patch_labels is None or features.qformer_input is None:
                raise ValueError("dense supervision needs patch labels and the ViT output (visual_input all/qformer)")
            dense_loss = self._dense_loss(features.qformer_input[:, 1:], batch.patch_labels)  # drop CLS
        words_loss = token_loss.new_zeros(())
        if self.patch_words is not None:
            if batch.patch_labels is None or features.aggregator_tokens is None:
                raise ValueError("data.dense_words needs patch labels and the aggregator's tokens (visual_input all)")
            words_loss = self._words_loss(features.aggregator_tokens[:, 1:], batch.patch_labels)  # drop CLS
        return token_loss, {"dense_supervision": dense_loss, "attention_supervision": attention_loss,
                            "dense_words": words_loss, "word_attention": word_attention_loss}

    def _dense_loss(self, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the labels of the per-patch cross-entropy; patches [I, P, D], labels [I, P, K]."""
        logits = self.probe(patches.float()).split(self.dense_classes, dim=-1)
        return torch.stack([F.cross_entropy(kind.flatten(0, 1), labels[..., i].flatten())
                            for i, kind in enumerate(logits)]).mean()

    def _words_loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the labels of the cross-entropy, on object patches, of the cosine between each
        T5-side patch token [I, P, d_model] and T5's embeddings of that label's words."""
        # A fixed scale (CLIP's 1/0.07 rounded): cosines alone give logits in [-1, 1], too flat to learn from.
        scale = 14.0
        tokens = F.normalize(tokens.float(), dim=-1)
        shared = self.lion.language_model.shared.weight
        losses = []
        for column, ids in enumerate(self.patch_words):
            target = labels[..., column]
            on_object = target > 0
            if not on_object.any():
                continue
            words = F.normalize(shared[ids.to(shared.device)].float(), dim=-1)  # [n, d_model]
            logits = scale * tokens[on_object] @ words.T
            losses.append(F.cross_entropy(logits, target[on_object] - 1))
        return torch.stack(losses).mean() if losses else tokens.new_zeros(())

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
        if self.training and self.aggregator_dropout > 0 and features.aggregator_tokens is not None:
            keep = torch.rand(len(rows), device=image_rows.device) >= self.aggregator_dropout
            features.aggregator_tokens = features.aggregator_tokens * keep[:, None, None].to(features.aggregator_tokens.dtype)
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
    model_dir: Optional[Path]  # rank 0 only
    seconds: float
    model: LionModel  # this rank's trained model (full weights except under FSDP)


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
    training_module = build_training_module(lion, config, tokenizers).to(env.device)
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

    logger = MetricLogger(out_dir, enabled=env.is_main, resume_step=step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda" and config.run.bf16)
    set_train_mode(module, lion, config.stage)
    progress = tqdm(total=config.optim.steps, initial=step, disable=not env.is_main, desc=config.stage, dynamic_ncols=True)
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
                token_loss, auxiliary = module(batch)
            mask = batch.labels != -100
            loss = total_loss(token_loss, auxiliary, mask, config)
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
            stats.update({AUXILIARY_LOSSES[name]: float(value.detach()) for name, value in auxiliary.items()})
            stats = dist_utils.mean_over_ranks(stats, env)
            loss_value = stats["loss"]
            window_s = time.time() - window_start
            stats.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                         samples_per_s=window_samples / max(window_s, 1e-9), elapsed_s=elapsed)
            logger.log(step, stats)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{stats['lr']:.2e}")
            window_start, window_samples = time.time(), 0

        out_of_time = config.run.max_minutes > 0 and elapsed > 60 * config.run.max_minutes
        if step % config.run.checkpoint_every == 0 or out_of_time:
            save_checkpoint(out_dir, step, elapsed, module, lion, tokenizers, optimizer, config, env,
                            training_module.probe)
        if out_of_time:
            log.warning("stopping at step %d: run.max_minutes=%s reached", step, config.run.max_minutes)
            break
    progress.close()
    logger.close()

    model_dir = out_dir / FINAL_DIR
    with dist_utils.full_weights(module, env):
        if env.is_main:
            lion.save_pretrained(model_dir)
            tokenizers.save(model_dir)
            config.save(model_dir / "train_config.yaml")
    dist_utils.barrier(env)
    # Drop the DDP/FSDP wrapper first: it holds the process group, which would otherwise be
    # destroyed only when this frame unwinds, after the peer may have exited (a rank then hung
    # at exit in the 2-process gloo test). This way every rank destroys it inside teardown.
    del module
    dist_utils.teardown(env)
    return TrainResult(step=step, final_loss=loss_value, model_dir=model_dir if env.is_main else None,
                       seconds=time.time() - start_time, model=lion)


def build_training_module(lion: LionModel, config: TrainConfig, tokenizers: LionTokenizers) -> TrainingModule:
    """The stage's training module, with the auxiliary losses its `data.*` weights turn on."""
    data = config.data
    return TrainingModule(
        lion, data.length_groups,
        patch_label_classes(data.dense_targets) if data.dense_supervision > 0 else (),
        data.attention_supervision > 0,
        patch_word_ids(tokenizers) if data.dense_words > 0 else None,
        label_word_ids(tokenizers) if data.word_attention > 0 else None,
        data.aggregator_dropout,
    )


def patch_targets(data: DataSection) -> list[str]:
    """The patch-label groups each image's batch must carry (dense supervision, dense words)."""
    return data.dense_targets if data.dense_supervision > 0 or data.dense_words > 0 else []


def total_loss(token_loss: torch.Tensor, auxiliary: dict[str, torch.Tensor], mask: torch.Tensor,
               config: TrainConfig) -> torch.Tensor:
    """The loss a step minimises: the answer loss of the [B, L] per-token losses and their mask,
    plus each auxiliary loss times its `data.*` weight."""
    loss = answer_loss(token_loss, mask, config.optim.loss_average)
    for name, value in auxiliary.items():
        loss = loss + getattr(config.data, name) * value
    return loss


def answer_loss(token_loss: torch.Tensor, mask: torch.Tensor, average: str) -> torch.Tensor:
    """The batch's answer loss from [B, L] per-token losses and their mask (`optim.loss_average`)."""
    if average == "question":
        return (token_loss.sum(1) / mask.sum(1).clamp(min=1)).mean()
    return token_loss.sum() / mask.sum()


def patch_word_ids(tokenizers: LionTokenizers) -> list[torch.Tensor]:
    """T5 ids of the words the `object` patch labels name (`OBJECT_LABEL_NAMES`), one tensor per
    label column."""
    ids = []
    for words in OBJECT_LABEL_NAMES:
        pieces = [tokenizers.t5(word, add_special_tokens=False)["input_ids"] for word in words]
        split = [word for word, p in zip(words, pieces) if len(p) != 1]
        if split:
            raise ValueError(f"data.dense_words needs one T5 token per word; the tokenizer splits {split}")
        ids.append(torch.tensor([p[0] for p in pieces]))
    return ids


def label_word_ids(tokenizers: LionTokenizers) -> torch.Tensor:
    """Q-Former ids of the words that name a synthetic object (`OBJECT_LABEL_NAMES`: category,
    colour, size), for data.word_attention, plus the first piece of each category's plural (the
    whole plural when the vocabulary has it, else its stem, which is the category word)."""
    names = [word for words in OBJECT_LABEL_NAMES for word in words]
    pieces = {word: tokenizers.qformer(word, add_special_tokens=False)["input_ids"] for word in names}
    split = [word for word, ids in pieces.items() if len(ids) != 1]
    if split:
        raise ValueError(f"data.word_attention needs one Q-Former token per label word; the tokenizer splits {split}")
    plurals = [tokenizers.qformer(PLURALS[c], add_special_tokens=False)["input_ids"][0] for c in OBJECT_LABEL_NAMES[0]]
    return torch.tensor(sorted({ids[0] for ids in pieces.values()} | set(plurals)))


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

    FIELDS = ("step", "loss", "loss_region", "loss_image", "loss_dense", "loss_attention", "loss_words", "lr", "grad_norm",
              "samples_per_s", "elapsed_s", "loss_word_attention")

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        path = out_dir / "log.csv"
        new = resume_step == 0 or not path.exists()
        self.file = path.open("w" if new else "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.csv.writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, stats: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{stats[k]:.6g}" for k in self.FIELDS[1:]}}
        self.csv.writerow(row)
        self.file.flush()
        for key, value in stats.items():
            if not math.isnan(value):
                self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def save_checkpoint(
    out_dir: Path, step: int, seconds: float, module: nn.Module, lion: LionModel, tokenizers: LionTokenizers,
    optimizer: torch.optim.Optimizer, config: TrainConfig, env: dist_utils.DistEnv,
    probe: Optional[nn.Module] = None,
) -> None:
    """Model + optimizer + step + the stage's wall time so far + every rank's RNG, then prune old
    checkpoints (the learning rate is a function of step and time, so it needs no state).

    The tokenizers go along so that a checkpoint is a model directory `lion-eval` can read."""
    ckpt = out_dir / CHECKPOINTS_DIR / f"step-{step:07d}"
    optim_state = dist_utils.optimizer_state(module, optimizer, env)
    with dist_utils.full_weights(module, env):
        if env.is_main:
            lion.save_pretrained(ckpt)
            tokenizers.save(ckpt)
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
    probe: Optional[nn.Module] = None,
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


def find_resume(resume: str, out_dir: Path) -> Optional[Path]:
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
