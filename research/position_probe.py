"""Is the position of the two objects a spatial question names in the state that answers it?

    python research/position_probe.py --model DIR [--scenes 400] [--relations left,right]

For the spatial questions of `--scenes` train scenes, ridge regressions (fitted on 70 % of the
questions, R² on the other 30 %) predict each object's coordinate on the asked axis (x: box centre;
depth: bottom edge), their difference and the yes/no label from:

- the aggregator tokens over each object's own patches (the control: the position is there);
- the T5 encoder's question tokens, averaged, and its last question token;
- the decoder's input embedding and its hidden state after each layer, at the first answer step
  (where a plain yes/no model writes its verdict).

R² near 0 in the decoder with a high control means the answer never looks the objects up.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from lion_ros.data.synthetic import SyntheticConfig, SyntheticDataset, TaskMix, patch_mask
from lion_ros.model.lion import LionModel
from lion_ros.preprocess import PreprocessConfig
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.config import DataSection
from lion_ros.train.data import Collator

TARGETS = ("a", "b", "a - b", "yes")


def ridge_r2(features: np.ndarray, target: np.ndarray, train_share: float = 0.7, alpha: float = 10.0) -> float:
    """Held-out R² of a ridge regression on standardised features (first `train_share` to fit)."""
    cut = int(train_share * len(target))
    mean, std = features[:cut].mean(0), features[:cut].std(0) + 1e-6
    x = np.c_[(features - mean) / std, np.ones(len(features))]
    weights = np.linalg.solve(x[:cut].T @ x[:cut] + alpha * np.eye(x.shape[1]), x[:cut].T @ target[:cut])
    residual = x[cut:] @ weights - target[cut:]
    return float(1 - (residual**2).mean() / target[cut:].var())


def object_patches(box: tuple[float, ...], grid: int) -> torch.Tensor:
    """[grid*grid] bool: the patches whose centre is in `box`, or the one under its centre."""
    mask = patch_mask([box], grid)
    if not mask.any():
        column, row = (min(grid - 1, int(grid * (lo + hi) / 2)) for lo, hi in ((box[0], box[2]), (box[1], box[3])))
        mask[row * grid + column] = True
    return torch.from_numpy(mask)


@torch.no_grad()
def answer_states(lion: LionModel, tokenizers: LionTokenizers, scenes: SyntheticDataset
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features per spatial question (name -> [n, d]) and targets [n, 4] in TARGETS order."""
    collate = Collator(tokenizers, DataSection(), PreprocessConfig(image_size=lion.config.vision.image_size),
                       lion.config.qformer.max_position_embeddings)
    grid = lion.config.vision.patch_grid
    per_scene = scenes.config.tasks.total()
    features: dict[str, list[np.ndarray]] = {}
    targets = []
    for index in range(scenes.num_scenes):
        questions = [s for s in (scenes[index * per_scene + k] for k in range(per_scene)) if s.task_name == "yesno"]
        if not questions:
            continue
        batch = collate([(questions[0].image, questions, None)], np.random.default_rng(index))
        image = lion.encode_image(batch.pixel_values)
        prefix = lion.visual_prefix(image, batch.qformer_input_ids, batch.qformer_attention_mask)
        encoded, mask = lion.encode(prefix, batch.input_ids, batch.attention_mask, batch.task_index)
        with lion.route(batch.task_index):
            decoder = lion.language_model.decoder(
                input_ids=torch.zeros(len(questions), 1, dtype=torch.long), encoder_hidden_states=encoded,
                encoder_attention_mask=mask, output_hidden_states=True)
        patches = image.aggregator_tokens[0, -grid * grid:]  # the patch tokens, after any [CLS]
        text = encoded[:, prefix.shape[1]:]
        text_mask = batch.attention_mask.unsqueeze(-1).to(text.dtype)
        rows = {
            "control: aggregator over the objects": [
                torch.cat([patches[object_patches(box, grid)].mean(0) for box in q.evidence]) for q in questions],
            "encoder: question tokens, mean": (text * text_mask).sum(1) / text_mask.sum(1),
            "encoder: last question token": text[torch.arange(len(questions)), batch.attention_mask.sum(1) - 1],
            **{f"decoder: after layer {i}" if i else "decoder: input embedding": h[:, 0]
               for i, h in enumerate(decoder.hidden_states)},
        }
        for name, values in rows.items():
            features.setdefault(name, []).extend(v.float().numpy() for v in values)
        for q in questions:
            depth = "left" not in q.question and "right" not in q.question
            a, b = (box[3] if depth else (box[0] + box[2]) / 2 for box in q.evidence)
            targets.append((a, b, a - b, float(q.yes_no)))
    return {name: np.stack(rows) for name, rows in features.items()}, np.array(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json, weights, tokenizers)")
    parser.add_argument("--scenes", type=int, default=400, help="train scenes, 4 spatial questions each")
    parser.add_argument("--relations", default="left,right", help="relations asked, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lion = LionModel.from_pretrained(args.model).eval()
    config = SyntheticConfig(tasks=TaskMix.only({"spatial": 4}), spatial_relations=args.relations.split(","))
    features, targets = answer_states(lion, LionTokenizers.load(args.model),
                                      SyntheticDataset("train", args.scenes, config, cache_size=1))
    print(f"{len(targets)} questions ({args.relations}); held-out R² of ridge probes\n")
    print("| features | " + " | ".join(TARGETS) + " |\n|---|" + "---|" * len(TARGETS))
    for name, x in features.items():
        print(f"| {name} | " + " | ".join(f"{ridge_r2(x, targets[:, j]):.3f}" for j in range(len(TARGETS))) + " |")


if __name__ == "__main__":
    main()
