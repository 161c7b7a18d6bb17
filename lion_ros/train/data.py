"""Training batches: images with several questions each, tokenised for T5 and the Q-Former.

Batch composition is a pure function of (seed, epoch, batch number, rank): the scene order comes
from `DistributedSampler` (each rank its own shard) and the questions of a scene from a
generator seeded with the scene index, so a resumed run sees exactly the batches an
uninterrupted one would, whatever `num_workers` is.

Augmentation is photometric only (brightness and contrast, no hue: colour names are targets).
Geometric augmentation is deliberately absent: a flip or crop would have to rewrite every box
and also the text that encodes geometry ("left of", captions and box lists ordered left to
right, counts of objects cut by a crop), and synthetic scenes are unlimited anyway.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from lion_ros.api import TaskKind
from lion_ros.data.images import load_rgb
from lion_ros.data.sample import Sample
from lion_ros.data.sources import load_source
from lion_ros.data.synthetic import SyntheticDataset, patch_label_classes, patch_labels
from lion_ros.model.config import LionConfig
from lion_ros.preprocess import PreprocessConfig, preprocess_image
from lion_ros.prompts import build_qformer_prompt, build_t5_prompt
from lion_ros.tokenization import LionTokenizers

from .config import DataSection

# Which router rows a stage trains on: stage 1 is image-level data, stage 2 region-level data.
STAGE_TASKS: dict[str, tuple[TaskKind, ...]] = {
    "stage0": (TaskKind.REGION, TaskKind.IMAGE),
    "stage1": (TaskKind.IMAGE,),
    "stage2": (TaskKind.REGION,),
    "stage3": (TaskKind.REGION, TaskKind.IMAGE),
    "mixed": (TaskKind.REGION, TaskKind.IMAGE),
}


@dataclass
class TrainBatch:
    """One step's tensors. Question i is about image `image_index[i]`."""

    pixel_values: torch.Tensor  # [I, 3, S, S]
    image_index: torch.Tensor  # [B]
    input_ids: torch.Tensor  # [B, T] T5 prompt, right-padded
    attention_mask: torch.Tensor
    qformer_input_ids: torch.Tensor  # [B, Q]
    qformer_attention_mask: torch.Tensor
    labels: torch.Tensor  # [B, L], -100 at padding
    task_index: torch.Tensor  # [B] router rows (TaskKind)
    patch_labels: torch.Tensor | None = None  # [I, P, K] per-patch labels (dense supervision)

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(**{k: None if v is None else v.to(device, non_blocking=True) for k, v in vars(self).items()})

    @property
    def num_questions(self) -> int:
        return self.input_ids.shape[0]


class Collator:
    """Turns (image, samples) groups into a `TrainBatch`."""

    def __init__(
        self, tokenizers: LionTokenizers, config: DataSection, preprocess: PreprocessConfig, qformer_max_tokens: int,
    ) -> None:
        self.tokenizers = tokenizers
        self.config = config
        self.preprocess = preprocess
        # The Q-Former's text positions are learned embeddings: never exceed their number.
        self.qformer_max_tokens = min(config.max_prompt_tokens, qformer_max_tokens)

    @classmethod
    def for_model(cls, tokenizers: LionTokenizers, config: DataSection, model: LionConfig) -> Collator:
        """The collator of `model`'s inputs: its image size and Q-Former text positions."""
        return cls(tokenizers, config, PreprocessConfig(image_size=model.vision.image_size),
                   qformer_max_tokens=model.qformer.max_position_embeddings)

    def __call__(self, groups: Sequence[tuple[np.ndarray, list[Sample], np.ndarray | None]],
                 rng: np.random.Generator) -> TrainBatch:
        """groups: (image, its samples, its patch labels or None) per image."""
        pixels, image_index, samples = [], [], []
        labels = [group[2] for group in groups]
        for i, (image, group, _) in enumerate(groups):
            pixels.append(preprocess_image(self._photometric(image, rng), self.preprocess))
            image_index += [i] * len(group)
            samples += group
        drop = rng.random(len(samples)) < self.config.tag_dropout
        t5_prompts = [build_t5_prompt(s.question, None if d else s.tags) for s, d in zip(samples, drop)]
        t5 = self.tokenizers.t5(
            t5_prompts, padding="longest", truncation=True, max_length=self.config.max_prompt_tokens,
            return_tensors="pt",
        )
        qformer = self.tokenizers.qformer(
            [build_qformer_prompt(s.question) for s in samples], padding="longest", truncation=True,
            max_length=self.qformer_max_tokens, return_tensors="pt",
        )
        return TrainBatch(
            pixel_values=torch.from_numpy(np.stack(pixels)),
            image_index=torch.tensor(image_index, dtype=torch.long),
            input_ids=t5["input_ids"],
            attention_mask=t5["attention_mask"],
            qformer_input_ids=qformer["input_ids"],
            qformer_attention_mask=qformer["attention_mask"],
            labels=self.labels([s.answer for s in samples]),
            task_index=torch.tensor([int(s.task) for s in samples], dtype=torch.long),
            patch_labels=None if labels[0] is None else torch.from_numpy(np.stack(labels)),
        )

    def labels(self, answers: Sequence[str]) -> torch.Tensor:
        """Answer ids ending in EOS, cut from the right (the T5 tokenizer cuts prompts from the
        left, so targets are truncated here), padded with -100."""
        eos = self.tokenizers.t5.eos_token_id
        limit = self.config.max_target_tokens
        rows = [[*ids[:limit - 1], eos] if len(ids) > limit else ids
                for ids in self.tokenizers.t5(list(answers))["input_ids"]]
        out = torch.full((len(rows), max(map(len, rows))), -100, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def _photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        strength = self.config.photometric
        if strength <= 0:
            return image
        gain, contrast = 1 + rng.uniform(-strength, strength, 2)
        mean = image.mean()
        # The map depends on the pixel value alone, so it is computed for the 256 values and
        # looked up: the same bytes as computing it per pixel, 7x faster at 640x480.
        levels = (np.arange(256, dtype=np.float32) - mean) * contrast + mean * gain
        return cv2.LUT(image, np.clip(levels, 0, 255).astype(np.uint8))


class ImageBatches(Dataset):
    """Batch `k` of one epoch on one rank over `num_images` images, each with up to
    `questions_per_image` of its questions; map-style so a DataLoader can prefetch in workers.
    Subclasses say what image `i` and its candidate questions are."""

    def __init__(self, config: DataSection, collator: Collator, tasks: Sequence[TaskKind], seed: int,
                 num_images: int, rank: int = 0, world_size: int = 1) -> None:
        self.config = config
        self.collator = collator
        self.tasks = frozenset(tasks)
        self.seed = seed
        self.sampler = DistributedSampler(
            range(num_images), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True,
        )
        self.epoch = -1
        self.order: list[int] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.sampler.set_epoch(epoch)
            self.order = list(self.sampler)

    def __len__(self) -> int:
        return len(self.order) // self.config.images_per_batch

    def __getitem__(self, k: int) -> TrainBatch:
        per = self.config.images_per_batch
        groups = [self._group(index) for index in self.order[k * per : (k + 1) * per]]
        return self.collator(groups, np.random.default_rng([self.seed, self.epoch, k, 1]))

    def image(self, index: int) -> tuple[np.ndarray, list[Sample], np.ndarray | None]:
        """(RGB image, its samples of this stage's tasks, its patch labels or None)."""
        raise NotImplementedError

    def _group(self, index: int) -> tuple[np.ndarray, list[Sample], np.ndarray | None]:
        rgb, samples, labels = self.image(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        n = min(self.config.questions_per_image, len(samples))
        chosen = [samples[i] for i in sorted(rng.choice(len(samples), size=n, replace=False))]
        return rgb, chosen, labels


def patch_targets(config: DataSection) -> list[str]:
    """The per-patch label groups each image of a synthetic batch carries: `dense_targets` when
    dense supervision is on, none otherwise."""
    return config.dense_targets if config.dense_supervision > 0 else []


def patch_classes(config: DataSection) -> tuple[int, ...]:
    """Classes of each per-patch label column of `patch_targets` (the dense probe's outputs)."""
    return patch_label_classes(targets) if (targets := patch_targets(config)) else ()


class SyntheticBatches(ImageBatches):
    """Batches of rendered synthetic scenes."""

    def __init__(
        self,
        config: DataSection,
        collator: Collator,
        tasks: Sequence[TaskKind],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        source: SyntheticDataset | None = None,
        patch_grid: int = 0,
        patch_targets: Sequence[str] = (),
    ) -> None:
        """patch_targets: also give each image its `patch_labels` of those groups on a
        `patch_grid` x `patch_grid` layout (the ViT's)."""
        self.patch_grid = patch_grid
        self.patch_targets = tuple(patch_targets)
        self.source = source or SyntheticDataset("train", config.num_scenes, config.synthetic, cache_size=1)
        super().__init__(config, collator, tasks, seed, self.source.num_scenes, rank, world_size)

    def image(self, index: int) -> tuple[np.ndarray, list[Sample], np.ndarray | None]:
        samples = [s for s in self.source.scene_samples(index) if s.task in self.tasks]
        scene = self.source.scene(index)
        labels = patch_labels(scene, self.patch_grid, self.patch_targets) if self.patch_targets else None
        return scene.rgb, samples, labels


def check_images_exist(paths: Collection[str], what: str) -> None:
    """Raise FileNotFoundError, naming a few, if any of the image `paths` of `what` (a config key)
    is missing: a wrong image_root should fail before training, not hours into the run."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images of {what} not found, e.g. "
                                f"{', '.join(missing[:3])} (check image_root)")


class FileBatches(ImageBatches):
    """Batches of the images of dataset files (`data.files`): every image with at least one
    question of this stage's tasks, in a fixed order (sorted by path) so batches are a
    function of the seed, as for synthetic scenes."""

    def __init__(self, config: DataSection, collator: Collator, tasks: Sequence[TaskKind], seed: int,
                 rank: int = 0, world_size: int = 1, samples: Sequence[Sample] | None = None) -> None:
        """samples: the files' samples (default: read `config.files`)."""
        if samples is None:
            samples = [s for source in config.files for s in load_source(source, variety_seed=0)]
        wanted = frozenset(tasks)
        by_image: dict[str, list[Sample]] = {}
        for sample in samples:
            if sample.task in wanted:
                if not sample.image_path:
                    raise ValueError(f"sample {sample.id} has no image_path")
                by_image.setdefault(sample.image_path, []).append(sample)
        if not by_image:
            raise ValueError(f"data.files hold no samples of this stage's tasks ({', '.join(t.name for t in tasks)})")
        check_images_exist(by_image, "data.files")
        self.images = sorted(by_image)
        self.samples = by_image
        super().__init__(config, collator, tasks, seed, len(self.images), rank, world_size)

    def image(self, index: int) -> tuple[np.ndarray, list[Sample], np.ndarray | None]:
        path = self.images[index]
        return load_rgb(path), self.samples[path], None


class BatchStream:
    """Endless batches starting at global step `start_step`, crossing epochs as needed."""

    def __init__(self, dataset: ImageBatches, start_step: int, num_workers: int, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError("the training scene pool is smaller than one batch per rank")
        self.dataset = dataset
        self.step = start_step
        self.num_workers = num_workers
        self.seed = seed

    def __iter__(self) -> Iterator[TrainBatch]:
        while True:
            epoch, offset = divmod(self.step, len(self.dataset))
            self.dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, sampler=range(offset, len(self.dataset)),
                num_workers=self.num_workers, persistent_workers=False,
                # Worker seeds come from this generator, not the global RNG, so starting a loader
                # does not shift the dropout masks of the training step (exact resume).
                generator=torch.Generator().manual_seed(self.seed + epoch),
            )
            for batch in loader:
                self.step += 1
                yield batch
