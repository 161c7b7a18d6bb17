"""Where a model looks and what its ViT sees, on synthetic test scenes.

    python scripts/grounding.py --model DIR [--scenes 30]

Attention: for the attribute questions of `--scenes` test scenes, the share of attention that
lands on the patches of the asked-about object (`Sample.evidence`), for the Q-Former's last
cross-attention (mean over heads and queries) and for the first T5 encoder layer's text tokens
over the aggregator's patch tokens (renormalised over those tokens); uniform attention scores
the fraction of patches the object covers, printed beside them.

Probe (when DIR is a stage-0 checkpoint, `checkpoints/step-N`, trained with
data.dense_supervision and its default `object` targets): accuracy of the dense-supervision probe on the ViT's object patches,
per label (category, colour, size): how well the ViT itself sees what a question asks about.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lion_ros.data.synthetic import Scene, SyntheticDataset, patch_label_classes, patch_labels, patch_mask
from lion_ros.model.lion import ImageFeatures, LionModel
from lion_ros.preprocess import PreprocessConfig, preprocess_image
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.trainer import STATE_NAME, QFormerCrossAttention


def encode_scene(lion: LionModel, scene: Scene) -> ImageFeatures:
    pixels = preprocess_image(scene.rgb, PreprocessConfig(image_size=lion.config.vision.image_size))
    return lion.encode_image(torch.from_numpy(pixels)[None])


def attention_on_evidence(lion: LionModel, tokenizers: LionTokenizers, scenes: SyntheticDataset) -> dict[str, float]:
    if not (lion.config.uses_qformer and lion.config.uses_aggregator):
        raise SystemExit("the attention report needs visual_input 'all' (Q-Former and aggregator tokens)")
    lion.language_model.set_attn_implementation("eager")  # the only path that returns probabilities
    grid = lion.config.vision.patch_grid
    patches = slice(lion.config.qformer.num_query_tokens + 1, lion.config.qformer.num_query_tokens + 1 + grid * grid)
    recorder = QFormerCrossAttention(lion)
    qformer, t5, uniform = [], [], []
    for index in range(scenes.num_scenes):
        features = encode_scene(lion, scenes.scene(index))
        for sample in scenes.scene_samples(index):
            if sample.task_name != "attribute":
                continue
            mask = torch.from_numpy(patch_mask(sample.evidence, grid)).float()
            q = tokenizers.qformer([sample.question], return_tensors="pt")
            with recorder:
                prefix = lion.visual_prefix(features, q["input_ids"], q["attention_mask"])
            qformer.append(float((recorder.maps[0][..., 1:] * mask).sum(-1).mean()))
            t = tokenizers.t5([sample.question], return_tensors="pt")
            embeds, attention_mask = lion.encoder_inputs(prefix, t["input_ids"], t["attention_mask"])
            with lion.route(torch.tensor([int(sample.task)])):
                out = lion.language_model.encoder(inputs_embeds=embeds, attention_mask=attention_mask,
                                                  output_attentions=True)
            text_to_patches = out.attentions[0][0, :, prefix.shape[1]:, patches]  # [heads, text, patches]
            t5.append(float(((text_to_patches * mask).sum(-1) / text_to_patches.sum(-1)).mean()))
            uniform.append(float(mask.mean()))
    return {"questions": len(uniform), "qformer": float(np.mean(qformer)), "t5_layer0": float(np.mean(t5)),
            "uniform": float(np.mean(uniform))}


def probe_accuracy(lion: LionModel, checkpoint: Path, scenes: SyntheticDataset) -> dict[str, float]:
    state = torch.load(checkpoint / STATE_NAME, weights_only=True)
    if "probe" not in state:
        raise SystemExit(f"{checkpoint} was trained without data.dense_supervision: no probe to read")
    classes = patch_label_classes(["object"])
    probe = torch.nn.Linear(lion.config.vision.hidden_size, sum(classes))
    probe.load_state_dict(state["probe"])  # raises when the checkpoint used other dense_targets
    grid = lion.config.vision.patch_grid
    correct, total = np.zeros(len(classes)), 0
    for index in range(scenes.num_scenes):
        scene = scenes.scene(index)
        labels = torch.from_numpy(patch_labels(scene, grid))
        logits = probe(encode_scene(lion, scene).qformer_input[0, 1:]).split(classes, dim=-1)
        on_object = labels[:, 0] > 0
        for k, kind in enumerate(logits):
            correct[k] += int((kind.argmax(-1)[on_object] == labels[on_object, k]).sum())
        total += int(on_object.sum())
    return {"object_patches": total, **{name: correct[k] / total for k, name in enumerate(("category", "colour", "size"))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="LION model directory, or a stage-0 checkpoint directory (adds the probe report)")
    parser.add_argument("--scenes", type=int, default=30, help="synthetic test scenes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lion = LionModel.from_pretrained(args.model).eval()
    tokenizers = LionTokenizers.load(args.model)
    scenes = SyntheticDataset("test", args.scenes)
    with torch.no_grad():
        attention = attention_on_evidence(lion, tokenizers, scenes)
        print("attention on the asked-about object ({questions} attribute questions): Q-Former {qformer:.3f}, "
              "T5 layer 0 {t5_layer0:.3f}, uniform {uniform:.3f}".format(**attention))
        if (args.model / STATE_NAME).exists():
            probe = probe_accuracy(lion, args.model, scenes)
            print("ViT probe on {object_patches} object patches: category {category:.3f}, colour {colour:.3f}, "
                  "size {size:.3f}".format(**probe))


if __name__ == "__main__":
    main()
