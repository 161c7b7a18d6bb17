"""Can the Q-Former learn to fetch the object a question names? A 2-minute probe on a frozen ViT.

    python scripts/retrieval_probe.py --model DIR [--steps 600] [--oracle] [--prototype-words]
        [--text-in-queries] [--word-attention W] [--attention-supervision W] [--queries N]
        [--fresh-qformer]

The ViT of DIR stays frozen; the Q-Former (with its query tokens) trains, and a linear head on
its query outputs predicts the one-word answer of synthetic attribute questions (colour, size,
category). No T5: the head reads the Q-Former directly, so the answer's gradient reaches the
Q-Former undiluted. Every 100 steps it prints held-out accuracy per attribute.

Variants isolate the steps of retrieval:
  --oracle           the cross-attention sees only the asked object's patches (retrieval given):
                     what the ViT features allow once the right patches are found
  --prototype-words  the Q-Former's embeddings of the category / colour / size words start at the
                     mean ViT feature of the patches with that label (minus the overall mean), so
                     a word and its patches live in one space
  --text-in-queries  each query token also gets the mean embedding of the question's words, so the
                     named object reaches the cross-attention without a self-attention hop
                     (not LION's Q-Former: a diagnostic only)
  --word-attention W adds W x -log of the share of the queries' first self-attention (mean over
                     heads and queries) that lands on the question's category / colour / size words:
                     the same hop, taught within LION's Q-Former (lion-train's data.word_attention)
  --attention-supervision W
                     adds W x -log of the last cross-attention's mass on the asked object's patches:
                     the second hop, taught directly (lion-train's data.attention_supervision)
  --queries N        a fresh Q-Former with N query tokens (LION: 32); with --fresh-qformer or N,
                     the Q-Former starts from a fresh initialisation instead of DIR's

Research tool for the recipe of lion-nano's stage 0 (HISTORY.md, "Where the answer is lost").
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections import defaultdict
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lion_ros.data.sample import Sample
from lion_ros.data.synthetic import (
    OBJECT_LABEL_NAMES, PLURALS, SyntheticConfig, SyntheticDataset, TaskMix, label_kind, patch_labels, patch_mask,
)
from lion_ros.model.lion import LionModel
from lion_ros.preprocess import PreprocessConfig, preprocess_image
from lion_ros.prompts import build_qformer_prompt
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.trainer import QFormerCrossAttention, QFormerWordAttention, label_word_ids

ATTRIBUTES = TaskMix(caption=0, spatial=0, count=0, attribute=3, rec=0, reg=0, grounded_caption=0, find_all=0)
ANSWERS = [name for names in OBJECT_LABEL_NAMES for name in names]


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        lion = LionModel.from_pretrained(args.model)
        if args.queries or args.fresh_qformer:
            config = lion.config
            qformer = dataclasses.replace(config.qformer, num_query_tokens=args.queries or config.qformer.num_query_tokens)
            fresh = LionModel(dataclasses.replace(config, qformer=qformer))
            fresh.vision_model.load_state_dict(lion.vision_model.state_dict())
            lion = fresh
        self.lion = lion
        self.tokenizers = LionTokenizers.load(args.model)
        self.preprocess = PreprocessConfig(image_size=lion.config.vision.image_size)
        self.grid = lion.config.vision.patch_grid
        self.oracle = args.oracle
        self.text_in_queries = args.text_in_queries
        self.scenes = SyntheticConfig(tasks=ATTRIBUTES)
        for param in lion.parameters():
            param.requires_grad_(False)
        trainable = [lion.query_tokens, *lion.qformer.parameters()]
        for param in trainable:
            param.requires_grad_(True)
        if args.prototype_words:
            self._prototype_words()
        self.word_attention = args.word_attention
        self.words = QFormerWordAttention(lion, label_word_ids(self.tokenizers))
        self.attention_supervision = args.attention_supervision
        self.cross = QFormerCrossAttention(lion)
        width = lion.config.qformer.hidden_size * lion.config.qformer.num_query_tokens
        self.head = torch.nn.Linear(width, len(ANSWERS))
        self.optimizer = torch.optim.AdamW(trainable + list(self.head.parameters()), lr=args.lr, weight_decay=0.01)

    def samples(self, split: str, num_scenes: int) -> Iterator[list[Sample]]:
        dataset = SyntheticDataset(split, num_scenes, self.scenes, cache_size=1)
        for index in range(num_scenes):
            samples = [s for s in dataset.scene_samples(index) if s.task_name == "attribute" and s.answer in ANSWERS]
            if samples:
                yield samples

    @torch.no_grad()
    def _vit(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([preprocess_image(rgb, self.preprocess) for rgb in rgbs]))
        return self.lion.encode_image(pixels).qformer_input

    @torch.no_grad()
    def _prototype_words(self, num_scenes: int = 150) -> None:
        dataset = SyntheticDataset("train", num_scenes, self.scenes, cache_size=1)
        features, labels = [], []
        for index in range(num_scenes):
            scene = dataset.scene(index)
            features.append(self._vit([scene.rgb])[0, 1:])
            labels.append(torch.from_numpy(patch_labels(scene, self.grid)))
        features, labels = torch.cat(features), torch.cat(labels)
        mean = features.mean(0)
        embeddings = self.lion.qformer.embeddings.word_embeddings.weight
        for column, names in enumerate(OBJECT_LABEL_NAMES):
            for value, name in enumerate(names, start=1):
                chosen = labels[:, column] == value
                if not chosen.any():
                    continue
                for word in [name, PLURALS[name]] if column == 0 else [name]:
                    ids = self.tokenizers.qformer(word, add_special_tokens=False)["input_ids"]
                    if len(ids) == 1:  # a word split into pieces keeps its embeddings
                        embeddings[ids[0]] = features[chosen].mean(0) - mean

    def loss(self, groups: list[list[Sample]]) -> torch.Tensor:
        """The answer loss, plus lion-train's data.word_attention and data.attention_supervision
        losses with --word-attention and --attention-supervision."""
        with contextlib.ExitStack() as recording:
            for weight, recorder in ((self.word_attention, self.words), (self.attention_supervision, self.cross)):
                if weight > 0:
                    recording.enter_context(recorder)
            logits, text = self.logits(groups)
        loss = F.cross_entropy(logits, self.targets(groups))
        rows = [torch.arange(len(logits))]
        if self.word_attention > 0:
            loss = loss + self.word_attention * self.words.word_loss(rows, text["input_ids"])
        if self.attention_supervision > 0:
            samples = [s for group in groups for s in group]
            evidence = torch.from_numpy(np.stack([patch_mask(s.evidence, self.grid) for s in samples]))
            loss = loss + self.attention_supervision * self.cross.evidence_loss(rows, evidence)
        return loss

    def logits(self, groups: list[list[Sample]]) -> tuple[torch.Tensor, dict]:
        """Answer logits of every question of `groups` (scenes' sample lists) and the Q-Former text batch."""
        lion = self.lion
        images = self._vit([group[0].image for group in groups])
        samples = [s for group in groups for s in group]
        rows = torch.tensor([i for i, group in enumerate(groups) for _ in group])
        text = self.tokenizers.qformer([build_qformer_prompt(s.question) for s in samples], padding="longest",
                                       return_tensors="pt")
        queries = lion.query_tokens.expand(len(samples), -1, -1)
        if self.text_in_queries:
            words = lion.qformer.embeddings.word_embeddings(text["input_ids"]) * text["attention_mask"][..., None]
            queries = queries + (words.sum(1) / text["attention_mask"].sum(1, keepdim=True))[:, None]
        image_mask = None
        if self.oracle:
            evidence = torch.from_numpy(np.stack([patch_mask(s.evidence, self.grid) for s in samples]))
            image_mask = torch.cat([torch.zeros(len(samples), 1, dtype=torch.long), evidence.long()], 1)  # no CLS
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=text["attention_mask"].dtype), text["attention_mask"]], 1)
        out = lion.qformer(input_ids=text["input_ids"], attention_mask=mask, query_embeds=queries,
                           encoder_hidden_states=images[rows], encoder_attention_mask=image_mask).last_hidden_state
        return self.head(out[:, : queries.shape[1]].flatten(1)), text

    @staticmethod
    def targets(groups: list[list[Sample]]) -> torch.Tensor:
        return torch.tensor([ANSWERS.index(s.answer) for group in groups for s in group])

    @torch.no_grad()
    def accuracy(self, test: list[list[Sample]]) -> dict[str, float]:
        correct: dict[str, int] = defaultdict(int)
        total: dict[str, int] = defaultdict(int)
        for start in range(0, len(test), 10):
            groups = test[start : start + 10]
            hits = (self.logits(groups)[0].argmax(1) == self.targets(groups)).tolist()
            for sample, hit in zip((s for group in groups for s in group), hits):
                correct[label_kind(sample.answer)] += hit
                total[label_kind(sample.answer)] += 1
        return {kind: round(correct[kind] / total[kind], 3) for kind in sorted(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LION model directory (its ViT is frozen)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scenes-per-step", type=int, default=8, help="8 scenes = about 24 questions")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--test-scenes", type=int, default=60, help="held-out test scenes (3 questions each)")
    parser.add_argument("--oracle", action="store_true", help="cross-attention sees only the asked object")
    parser.add_argument("--prototype-words", action="store_true", help="label words start at their patches' mean")
    parser.add_argument("--text-in-queries", action="store_true", help="add the question's mean word embedding to each query")
    parser.add_argument("--word-attention", type=float, default=0.0, metavar="W",
                        help="weight of the loss drawing the queries' self-attention to the label words")
    parser.add_argument("--attention-supervision", type=float, default=0.0, metavar="W",
                        help="weight of the loss drawing the last cross-attention to the asked object's patches")
    parser.add_argument("--queries", type=int, default=0, help="a fresh Q-Former with this many query tokens")
    parser.add_argument("--fresh-qformer", action="store_true", help="a fresh Q-Former instead of DIR's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    probe = Probe(args)
    test = list(probe.samples("test", args.test_scenes))
    train = probe.samples("train", 10**6)
    start = time.time()
    for step in range(1, args.steps + 1):
        groups = [next(train) for _ in range(args.scenes_per_step)]
        loss = probe.loss(groups)
        probe.optimizer.zero_grad()
        loss.backward()
        probe.optimizer.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step} ({time.time() - start:.0f} s) loss {loss.item():.3f} held-out accuracy "
                  f"{probe.accuracy(test)}", flush=True)


if __name__ == "__main__":
    main()
