"""Does a model fail spatial yes/no because it cannot find the two objects, or because it cannot
compare them? Answers each synthetic spatial question twice:

    python research/spatial_two_step.py --model DIR [--split test] [--scenes 30] [--threads 1]

- direct: the model's own answer to the question (what lion-eval scores);
- two-step: the model is asked for the box of each of the two objects (its REC prompt), and the
  relation is decided from those two boxes: left/right by the boxes' centres, in front/behind by
  their bottom edges (the camera looks down on the table, so nearer objects stand lower);
- self-consistent (models trained with `data.synthetic.spatial_answer: grounded` or `reasoned`,
  whose answers write both boxes or both coordinates before the verdict): how often the verdict
  is what its own written evidence implies.

A two-step accuracy near 1 with a direct one near 0.5 means the model finds both objects and
the information is there, but its one-token answer does not compose them.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

from tqdm import tqdm

from lion_ros import prompts
from lion_ros.api import TaskKind
from lion_ros.boxes import BoxCodec
from lion_ros.data.synthetic import RELATION_PHRASES, SyntheticConfig, SyntheticDataset, TaskMix
from lion_ros.eval.metrics import parse_yes_no

RELATION_OF_PHRASE = {phrase: relation for relation, phrases in RELATION_PHRASES.items() for phrase in phrases}
_QUESTION = re.compile(  # the two question forms of the synthetic spatial task
    r"Is (?:it true that )?(?P<a>the .+?) (?:is )?(?P<phrase>"
    + "|".join(re.escape(p) for p in sorted(RELATION_OF_PHRASE, key=len, reverse=True))
    + r") (?P<b>the .+)\?"
)


def relation_from_coordinates(relation: str, a: float, b: float) -> bool:
    """Whether object a is `relation` of object b, from their coordinates on the relation's axis:
    horizontal centres for left/right (smaller = left), bottom edges for front/behind (larger =
    nearer)."""
    if relation in ("left", "right"):
        return (a < b) == (relation == "left")
    return (a > b) == (relation == "front")


def relation_from_boxes(relation: str, box_a: tuple[float, ...], box_b: tuple[float, ...]) -> bool:
    """Whether object a is `relation` of object b, judged from their normalized boxes only."""
    axis = (lambda box: box[0] + box[2]) if relation in ("left", "right") else (lambda box: box[3])
    return relation_from_coordinates(relation, axis(box_a), axis(box_b))


_REASONED = re.compile(r".* (?P<a>\d+), .* (?P<b>\d+): (?:left|right|front|behind), (?:yes|no)")


def verdict_from_own_evidence(relation: str, answer: str, codec: BoxCodec) -> bool | None:
    """The verdict a grounded or reasoned answer's own evidence implies, None if it has none:
    two boxes (grounded) or two 0-99 coordinates (reasoned: centres across, bottom edges down)."""
    reasoned = _REASONED.fullmatch(answer)
    if reasoned:
        return relation_from_coordinates(relation, int(reasoned["a"]), int(reasoned["b"]))
    boxes = [box for _, box in codec.parse_normalized(answer)]
    return relation_from_boxes(relation, *boxes) if len(boxes) == 2 else None


def spatial_two_step(runtime: Any, dataset: SyntheticDataset, settings: Any) -> dict[str, dict[str, float]]:
    """Per relation kind ("left/right", "depth"): direct and two-step accuracy, the share of
    direct answers whose verdict follows their own written evidence (None when no answer wrote any),
    and n. A question whose boxes the model does not write counts as wrong in the two-step answer."""
    codec = BoxCodec()
    tallies: dict[str, Counter] = {}
    encoded: Any = None
    current = None
    for sample in tqdm(dataset, desc="spatial", unit="q"):
        match = _QUESTION.fullmatch(sample.question)
        if sample.task_name != "yesno" or match is None:
            continue
        if id(sample.image) != current:
            encoded, current = runtime.encode_image(sample.image), id(sample.image)
        relation = RELATION_OF_PHRASE[match["phrase"]]
        direct = runtime.answer(encoded, sample.question, tags=sample.tags, task=sample.task, settings=settings).text
        verdict = parse_yes_no(direct)
        boxes = []
        for ref in (match["a"], match["b"]):
            text = runtime.answer(encoded, prompts.rec_prompt(ref), tags=sample.tags, task=TaskKind.REGION,
                                  settings=settings).text
            found = codec.parse_normalized(text)
            boxes.append(found[0][1] if found else None)
        kind = "left/right" if relation in ("left", "right") else "depth"
        tally = tallies.setdefault(kind, Counter())
        tally["n"] += 1
        tally["direct"] += verdict == sample.yes_no
        tally["two_step"] += None not in boxes and relation_from_boxes(relation, *boxes) == sample.yes_no
        implied = verdict_from_own_evidence(relation, direct, codec)
        if implied is not None:
            tally["wrote_evidence"] += 1
            tally["consistent"] += implied == verdict
    return {
        kind: {"direct": t["direct"] / t["n"], "two_step": t["two_step"] / t["n"], "n": t["n"],
               "self_consistent": t["consistent"] / t["wrote_evidence"] if t["wrote_evidence"] else None}
        for kind, t in tallies.items()
    }

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json, weights, tokenizers)")
    parser.add_argument("--split", default="test", choices=["train", "test", "compositional"])
    parser.add_argument("--scenes", type=int, default=30, help="scenes, 6 spatial questions each")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    from lion_ros.runtime.backends import load_runtime
    from lion_ros.runtime.base import GenerationSettings

    torch.set_num_threads(args.threads)
    runtime = load_runtime("pytorch", args.model, "cpu", threads=args.threads)
    config = SyntheticConfig(prompt_variety=False, tasks=TaskMix.only({"spatial": 6}))
    report = spatial_two_step(runtime, SyntheticDataset(args.split, args.scenes, config, cache_size=1),
                              GenerationSettings(num_beams=1, max_new_tokens=120, repetition_penalty=1.0))
    print("| relation | n | direct answer | two-step (own REC boxes) | verdict follows its own evidence |")
    print("|---|---|---|---|---|")
    for kind, row in sorted(report.items()):
        consistent = "–" if row["self_consistent"] is None else f"{row['self_consistent']:.3f}"
        print(f"| {kind} | {row['n']} | {row['direct']:.3f} | {row['two_step']:.3f} | {consistent} |")


if __name__ == "__main__":
    main()
