"""Where a model looks and what its ViT sees, on synthetic test scenes.

    python research/grounding.py --model DIR [--scenes 30]

Attention: for the attribute questions of `--scenes` test scenes, the share of attention that
lands on the patches of the asked-about object (`Sample.evidence`), for the Q-Former's last
cross-attention (mean over heads and queries) and for the first T5 encoder layer's text tokens
over the aggregator's patch tokens (renormalised over those tokens); uniform attention scores
the fraction of patches the object covers, printed beside them (models with both branches).

Reading: for the colour questions of the test scenes, how well the asked-about object's colour
can be read (a linear probe fitted on the questions of 3 x `--scenes` train scenes, scored on the
test scenes') from the Q-Former's question-conditioned output (mean over its query tokens, after the
projection: what T5 reads), and, for comparison, from the ViT and aggregator tokens averaged over
the object's own patches (a perfect retrieval) or over the whole image (none). Beside it, how much
the Q-Former output moves when "What colour is the <category>?" names another category of the
same image, relative to asking it about another image: near 0 means the queries ignore which
object is named.

Spread: how much each branch's tokens change from one test image to another (mean distance of a
token from its mean over the images, relative to the mean token norm), for the ViT tokens, the
aggregator tokens and the Q-Former's projected output for one question: a Q-Former output that
hardly changes while the ViT tokens do has stopped carrying the image.

Probe (when DIR is a stage-0 checkpoint, `checkpoints/step-N`, trained with
data.dense_supervision and its default `object` targets): accuracy of the dense-supervision
probe on the ViT's object patches, per label (category, colour, size): how well the ViT itself
sees what a question asks about.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lion_ros.data.synthetic import (
    OBJECT_LABEL_KINDS,
    Scene,
    SyntheticDataset,
    label_kind,
    patch_label_classes,
    patch_labels,
    patch_mask,
)
from lion_ros.model.lion import ImageFeatures, LionModel
from lion_ros.preprocess import PreprocessConfig, preprocess_image
from lion_ros.tokenization import LionTokenizers
from lion_ros.train.trainer import STATE_NAME


class CrossAttentionMaps:
    """While active, records the attention probabilities of the Q-Former's last cross-attention
    (its queries over the ViT tokens), one [B, heads, queries, 1 + patches] map per pass.

    A forward pre-hook recomputes them from the module's own query and key projections and its
    mask because fused attention kernels do not return them; the module's output is untouched.
    """

    def __init__(self, lion: LionModel) -> None:
        if not lion.config.uses_qformer:
            raise ValueError("the cross-attention maps need the Q-Former (visual_input all/qformer)")
        layers = [layer for layer in lion.qformer.encoder.layer if layer.has_cross_attention]
        self.module = layers[-1].crossattention
        self.maps: list[torch.Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> CrossAttentionMaps:
        self.maps.clear()
        self._handle = self.module.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        attention = module.attention
        hidden = args[0] if args else kwargs["hidden_states"]
        keys, mask = kwargs["encoder_hidden_states"], kwargs.get("encoder_attention_mask")
        heads, size = attention.num_attention_heads, attention.attention_head_size
        q = attention.query(hidden).unflatten(-1, (heads, size)).transpose(1, 2)  # [B, H, Lq, d]
        k = attention.key(keys).unflatten(-1, (heads, size)).transpose(1, 2)  # [B, H, Lk, d]
        scores = (q @ k.transpose(-1, -2)).float() * attention.scaling
        if mask is not None:  # boolean "may attend" or additive, broadcastable to the scores
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        self.maps.append(torch.softmax(scores, dim=-1))


def encode_scene(lion: LionModel, scene: Scene) -> ImageFeatures:
    pixels = preprocess_image(scene.rgb, PreprocessConfig(image_size=lion.config.vision.image_size))
    return lion.encode_image(torch.from_numpy(pixels)[None])


def attention_on_evidence(lion: LionModel, tokenizers: LionTokenizers, scenes: SyntheticDataset) -> dict[str, float]:
    if not (lion.config.uses_qformer and lion.config.uses_aggregator):
        raise SystemExit("the attention report needs visual_input 'all' (Q-Former and aggregator tokens)")
    lion.language_model.set_attn_implementation("eager")  # the only path that returns probabilities
    grid = lion.config.vision.patch_grid
    patches = slice(lion.config.qformer.num_query_tokens + 1, lion.config.qformer.num_query_tokens + 1 + grid * grid)
    recorder = CrossAttentionMaps(lion)
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


def colour_questions(scenes: SyntheticDataset, index: int) -> list:
    """The scene's distinct colour questions (one per wording), with evidence."""
    out, seen = [], set()
    for sample in scenes.scene_samples(index):
        if sample.task_name == "attribute" and label_kind(sample.answer) == "colour" and sample.question not in seen:
            seen.add(sample.question)
            out.append(sample)
    return out


def qformer_output(lion: LionModel, tokenizers: LionTokenizers, image: ImageFeatures, questions: list[str]
                   ) -> torch.Tensor:
    """[questions, queries, d_model]: the Q-Former's projected query tokens for each question."""
    q = tokenizers.qformer(questions, padding="longest", return_tensors="pt")
    return lion.visual_prefix(image, q["input_ids"], q["attention_mask"])[:, : lion.config.qformer.num_query_tokens]


def reading_features(lion: LionModel, tokenizers: LionTokenizers, scenes: SyntheticDataset
                     ) -> tuple[dict[str, torch.Tensor], list[str], list[float], list[float]]:
    """Per colour question: the pooled features `reading_report` probes, its answer, and the
    Q-Former output distances between "What colour is the <category>?" for two categories of the
    image, and for one of them between this image and the next scene's."""
    grid = lion.config.vision.patch_grid
    features: dict[str, list[torch.Tensor]] = {"qformer": [], "vit_object": [], "vit_image": []}
    if lion.config.uses_aggregator:
        features["aggregator_object"] = []
    answers: list[str] = []
    same_image, other_image = [], []
    encoded = [encode_scene(lion, scenes.scene(i)) for i in range(scenes.num_scenes)]
    for index, image in enumerate(encoded):
        samples = colour_questions(scenes, index)
        if not samples:
            continue
        queries = qformer_output(lion, tokenizers, image, [s.question for s in samples])
        categories = sorted({o.category for o in scenes.scene(index).objects})
        if len(categories) > 1:
            named = [f"What colour is the {c}?" for c in categories[:2]]
            here = qformer_output(lion, tokenizers, image, named)
            there = qformer_output(lion, tokenizers, encoded[(index + 1) % len(encoded)], named[:1])
            same_image.append(float((here[1] - here[0]).norm()))
            other_image.append(float((there[0] - here[0]).norm()))
        for row, sample in enumerate(samples):
            mask = torch.from_numpy(patch_mask(sample.evidence, grid))
            if not mask.any():  # an object too small to own a patch has nothing to average
                continue
            features["qformer"].append(queries[row].mean(0))
            features["vit_object"].append(image.qformer_input[0, 1:][mask].mean(0))
            if image.aggregator_tokens is not None:
                features["aggregator_object"].append(image.aggregator_tokens[0, 1:][mask].mean(0))
            features["vit_image"].append(image.qformer_input[0, 1:].mean(0))
            answers.append(sample.answer)
    return {k: torch.stack(v) for k, v in features.items()}, answers, same_image, other_image


def image_spread(lion: LionModel, tokenizers: LionTokenizers, scenes: SyntheticDataset,
                 question: str = "What colour is the cup?") -> dict[str, float]:
    """Per branch, the tokens' mean distance from their mean over `scenes`' images, relative to
    their mean norm (see the module docstring)."""
    encoded = [encode_scene(lion, scenes.scene(i)) for i in range(scenes.num_scenes)]
    tokens = {"vit": [e.qformer_input[0] for e in encoded if e.qformer_input is not None],
              "aggregator": [e.aggregator_tokens[0] for e in encoded if e.aggregator_tokens is not None]}
    if lion.config.uses_qformer:
        tokens["qformer"] = [qformer_output(lion, tokenizers, e, [question])[0] for e in encoded]
    spread = {}
    for name, per_image in tokens.items():
        if per_image:
            stacked = torch.stack(per_image)  # [images, tokens, width]
            spread[name] = float((stacked - stacked.mean(0)).norm(dim=-1).mean() / stacked.norm(dim=-1).mean())
    return spread


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          classes: int) -> float:
    """Test accuracy of a softmax regression on standardised features (fixed seed and schedule)."""
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(500):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
            optimizer.step()
    return float((probe(test_x).argmax(1) == test_y).float().mean())


def reading_report(lion: LionModel, tokenizers: LionTokenizers, train: SyntheticDataset, test: SyntheticDataset
                   ) -> dict[str, float]:
    train_x, train_answers, _, _ = reading_features(lion, tokenizers, train)
    test_x, test_answers, same_image, other_image = reading_features(lion, tokenizers, test)
    colours = sorted(set(train_answers) | set(test_answers))
    train_y = torch.tensor([colours.index(a) for a in train_answers])
    test_y = torch.tensor([colours.index(a) for a in test_answers])
    report = {k: linear_probe_accuracy(train_x[k], train_y, test_x[k], test_y, len(colours)) for k in train_x}
    report.update(questions=len(test_answers), majority=max(test_answers.count(c) for c in colours) / len(test_answers),
                  referent_shift=float(np.mean(same_image) / np.mean(other_image)))
    return report


def probe_accuracy(lion: LionModel, checkpoint: Path, scenes: SyntheticDataset) -> dict[str, float] | None:
    """None when the checkpoint was trained without data.dense_supervision (no probe to read)."""
    state = torch.load(checkpoint / STATE_NAME, weights_only=True)
    if "probe" not in state:
        return None
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
    return {"object_patches": total, **{name: correct[k] / total for k, name in enumerate(OBJECT_LABEL_KINDS)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="LION model directory, or a stage-0 checkpoint directory (adds the probe report)")
    parser.add_argument("--scenes", type=int, default=30,
                        help="synthetic test scenes (the reading probe is fitted on 3x as many train scenes)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lion = LionModel.from_pretrained(args.model).eval()
    tokenizers = LionTokenizers.load(args.model)
    scenes = SyntheticDataset("test", args.scenes)
    with torch.no_grad():
        if lion.config.uses_aggregator:
            attention = attention_on_evidence(lion, tokenizers, scenes)
            print("attention on the asked-about object ({questions} attribute questions): Q-Former {qformer:.3f}, "
                  "T5 layer 0 {t5_layer0:.3f}, uniform {uniform:.3f}".format(**attention))
        if (args.model / STATE_NAME).exists():
            probe = probe_accuracy(lion, args.model, scenes)
            if probe is not None:
                print("ViT probe on {object_patches} object patches: category {category:.3f}, colour {colour:.3f}, "
                      "size {size:.3f}".format(**probe))
        reading = reading_report(lion, tokenizers, SyntheticDataset("train", 3 * args.scenes), scenes)
        aggregator = (", aggregator over the object {aggregator_object:.3f}" if "aggregator_object" in reading else "")
        print(("reading the asked object's colour ({questions} test questions, majority {majority:.3f}): "
               "Q-Former output {qformer:.3f}; ViT over the object {vit_object:.3f}" + aggregator +
               ", ViT over the whole image {vit_image:.3f}").format(**reading))
        print("Q-Former output shift when the question names another object of the image, relative to another "
              "image: {referent_shift:.3f}".format(**reading))
        spread = image_spread(lion, tokenizers, scenes)
        print(f"token spread across the {scenes.num_scenes} test images: "
              + ", ".join(f"{name} {value:.3f}" for name, value in spread.items()))


if __name__ == "__main__":
    main()
