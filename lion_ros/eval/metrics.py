"""Scoring functions for LION's benchmarks (pure Python; no model, no Java).

- Boxes: IoU and REC accuracy at IoU >= 0.5, in any one coordinate space per call.
- VQA: the official VQAv2 evaluator's normalisation and leave-one-annotator-out accuracy,
  reproduced quirk for quirk (e.g. ground-truth answers are only punctuation-normalised when
  the annotators disagree) so numbers are comparable with published ones.
- Yes/no: accuracy and precision/recall/F1 of the "yes" class, strict (an answer must state
  the right verdict, `lion_ros.answers.parse_verdict`; "no verdict" answers are wrong and
  counted) and by POPE's rule (anything without "no"/"not" is a yes), which the public
  benchmarks (POPE, VSR) report.
- Counting (an answer must state one count, as digits or a number word:
  `lion_ros.answers.parse_count`), exact match (attributes, REG on synthetic scenes).
- CIDEr-D as computed by coco-caption / pycocoevalcap's `CiderScorer`: n = 1..4, tf-idf with
  document frequencies over the references of the evaluated corpus, clipped tf-idf vectors,
  Gaussian length penalty with sigma 6 and the result times 10. Like that code, "length" is
  the bigram count. Tokenisation is a simple lower-casing word splitter standing in for the
  PTB tokenizer (which needs Java); scores can differ slightly from the Java pipeline.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from lion_ros.answers import parse_count, parse_verdict, strip_boxes
from lion_ros.boxes import DEFAULT_CODEC
from lion_ros.data.sample import Box, Sample

BoxLike = Sequence[float]

# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------

def iou(a: BoxLike, b: BoxLike) -> float:
    """Intersection over union of two xyxy boxes; 0 for degenerate boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parse_boxes(text: str) -> list[Box]:
    """Every box in `text`, normalised, parsed exactly as the runtime does (`BoxCodec`):
    clamped to [0, 1]; groups that are not 4 numbers or have zero area are skipped."""
    return [box for _, box in DEFAULT_CODEC.parse_normalized(text)]


def _as_box(prediction: str | BoxLike | None) -> BoxLike | None:
    if prediction is None:
        return None
    if isinstance(prediction, str):
        boxes = parse_boxes(prediction)
        return boxes[0] if boxes else None
    return prediction


def rec_accuracy(predictions: Sequence[str | BoxLike | None], references: Sequence[BoxLike],
                 threshold: float = 0.5) -> float:
    """Fraction of predictions with IoU >= threshold; unparseable predictions count as misses."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = 0
    for pred, ref in zip(predictions, references):
        box = _as_box(pred)
        hits += box is not None and iou(box, ref) >= threshold
    return hits / len(references)


def match_boxes(predictions: Sequence[BoxLike], references: Sequence[BoxLike], threshold: float = 0.5) -> int:
    """Greedy one-to-one matching by IoU (highest first); returns the number of matches."""
    pairs = sorted(((iou(p, r), i, j) for i, p in enumerate(predictions) for j, r in enumerate(references)),
                   reverse=True)
    used_p, used_r = set(), set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
    return len(used_p)


def box_set_metrics(predictions: Sequence[str | Sequence[BoxLike]], references: Sequence[Sequence[BoxLike]],
                    threshold: float = 0.5) -> dict[str, float]:
    """Micro precision/recall/F1 over box sets ("find all X"), plus the fraction of samples
    whose set is recovered exactly (every box matched, nothing extra)."""
    _check_lengths(predictions, references)
    tp = n_pred = n_ref = exact = 0
    for pred, ref in zip(predictions, references):
        boxes = parse_boxes(pred) if isinstance(pred, str) else list(pred)
        m = match_boxes(boxes, ref, threshold)
        tp, n_pred, n_ref = tp + m, n_pred + len(boxes), n_ref + len(ref)
        exact += m == len(ref) == len(boxes)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "exact": exact / len(references) if references else 0.0}


# ---------------------------------------------------------------------------------------
# VQAv2 official accuracy
# ---------------------------------------------------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Verbatim from the official evaluator, including the lookahead typo `(?!<=\d)`.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def vqa_process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official code passes re.UNICODE (= 32) as sub's `count`; kept for identical output.
    return _PERIOD_STRIP.sub("", out, 32)


def vqa_process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQAv2 accuracy of one answer: the mean over the leave-one-out subsets of the
    human answers of min(#matches / 3, 1).

    With a single reference (GQA-style data) leave-one-out is undefined, so this falls back to
    exact match of the normalised strings, which is GQA's own metric.
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    res = normalize_vqa_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in gt_answers]
    if len(gts) == 1:
        return float(res == normalize_vqa_answer(gts[0]))
    if len(set(gts)) > 1:
        gts = [vqa_process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == res)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def vqa_score(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return sum(vqa_accuracy(p, r) for p, r in zip(predictions, references)) / len(references)


# ---------------------------------------------------------------------------------------
# Yes/no, counting, exact match
# ---------------------------------------------------------------------------------------


def parse_yes_no(text: str) -> bool:
    """POPE's rule (True = yes): look at the first sentence; any "no"/"not" means no, otherwise
    yes, so an answer without a verdict ("pink") counts as yes. Public benchmarks (POPE, VSR)
    are reported with it; `parse_verdict` is the strict reading every bar uses.

    Boxes are dropped first: their decimal points are not sentence ends (a grounded answer,
    "the cup[0.12,0.40,0.31,0.77] is left of the ball[...]: no", is one sentence)."""
    text = strip_boxes(text)
    first = text.split(".")[0] if "." in text else text
    words = re.findall(r"[a-z']+", first.lower())
    return not ("no" in words or "not" in words)


_IS_YES: dict[str | None, bool] = {"yes": True, "no": False}


def _reference_is_yes(value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    verdict = _IS_YES.get(parse_verdict(value))
    if verdict is None:
        raise ValueError(f"yes/no reference {value!r} states no verdict")
    return verdict


def _yes_class_scores(preds: Sequence[bool | None], refs: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision/recall/F1 of "yes" and the yes ratio; a None prediction (no
    verdict) is neither yes nor no, so it is wrong for either reference."""
    tp = sum(p is True and r for p, r in zip(preds, refs))
    fp = sum(p is True and not r for p, r in zip(preds, refs))
    fn = sum(p is not True and r for p, r in zip(preds, refs))
    n = len(refs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": sum(p == r for p, r in zip(preds, refs)) / n if n else 0.0,
        "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(p is True for p in preds) / n if n else 0.0,
    }


def yes_no_metrics(predictions: Sequence[str | bool], references: Sequence[bool | str]) -> dict[str, float]:
    """Yes/no scores, strict and POPE-style.

    Strict (`accuracy`, `precision`, `recall`, `f1`, `yes_ratio`): an answer is read with
    `parse_verdict`; one that states no verdict is wrong whatever the reference, and
    `no_verdict_rate` counts them. POPE (the same names + `_pope`): `parse_yes_no`, under which
    an answer without "no"/"not" is a yes. A bool prediction is a verdict as it stands."""
    _check_lengths(predictions, references)
    refs = [_reference_is_yes(r) for r in references]
    strict = [p if isinstance(p, bool) else _IS_YES.get(parse_verdict(p)) for p in predictions]
    pope = [p if isinstance(p, bool) else parse_yes_no(p) for p in predictions]
    n = len(refs)
    return {
        **_yes_class_scores(strict, refs),
        "no_verdict_rate": sum(v is None for v in strict) / n if n else 0.0,
        **{f"{key}_pope": value for key, value in _yes_class_scores(pope, refs).items()},
    }


def count_metrics(predictions: Sequence[str], references: Sequence[int]) -> dict[str, float]:
    """Counting accuracy (the count `parse_count` reads equals the reference) and the share of
    answers that state no count at all (`no_count_rate`); those are wrong too."""
    _check_lengths(predictions, references)
    if not references:
        return {"accuracy": 0.0, "no_count_rate": 0.0}
    counts = [parse_count(p) for p in predictions]
    n = len(references)
    return {
        "accuracy": sum(c == int(r) for c, r in zip(counts, references)) / n,
        "no_count_rate": sum(c is None for c in counts) / n,
    }


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse spaces (for exact-match scoring)."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """A prediction is right when it equals any acceptable answer after `normalize_answer`."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = 0
    for pred, ref in zip(predictions, references):
        options = [ref] if isinstance(ref, str) else list(ref)
        hits += normalize_answer(pred) in {normalize_answer(o) for o in options}
    return hits / len(references)


# ---------------------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+|'[a-z]+")


def caption_tokenize(text: str) -> list[str]:
    """Lower-case word tokens without punctuation; boxes like `[0.1,0.2,0.3,0.4]` are dropped
    so grounded captions can be scored as captions."""
    return _TOKEN.findall(strip_boxes(text.lower()))


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i:i + k])] += 1
    return counts


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean) and per-image scores; idf comes from this corpus' references."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0, []
    if any(len(r) == 0 for r in references):
        raise ValueError("every image needs at least one reference caption")
    tests = [_ngrams(caption_tokenize(p), n) for p in predictions]
    refs = [[_ngrams(caption_tokenize(r), n) for r in rs] for rs in references]
    doc_freq: Counter = Counter()
    for rs in refs:
        doc_freq.update({g for r in rs for g in r})
    log_num_images = math.log(float(len(refs)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = float(tf) * (log_num_images - math.log(max(1.0, doc_freq[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:  # coco-caption measures length in bigrams
                length += tf
        return vec, [math.sqrt(v) for v in norm], length

    scores = []
    for test, rs in zip(tests, refs):
        vec, norm, length = vectorize(test)
        total = [0.0] * n
        for r in rs:
            vec_r, norm_r, length_r = vectorize(r)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and norm_r[k] != 0:
                    val /= norm[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(rs) * 10.0)
    return sum(scores) / len(scores), scores


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------

# Fine-grained task name -> metric family.
METRIC_FOR_TASK: dict[str, str] = {
    "rec": "rec", "find_all": "boxes", "vqa": "vqa", "yesno": "yesno", "count": "count",
    "attribute": "exact", "reg": "exact", "exact": "exact", "caption": "caption", "grounded_caption": "caption",
}


def score_predictions(task: str, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
    """Score raw model outputs against structured references.

    References by task: rec -> one box; find_all -> a list of boxes; vqa -> the list of human
    answers; yesno -> bool or "yes"/"no"; count -> int; attribute/reg/exact -> a string or a
    list of acceptable strings; caption/grounded_caption -> a list of reference captions.
    """
    if task not in METRIC_FOR_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(METRIC_FOR_TASK)}")
    _check_lengths(predictions, references)
    family = METRIC_FOR_TASK[task]
    n = float(len(references))
    if family == "rec":
        boxes = [_as_box(p) for p in predictions]
        ious = [iou(b, r) if b is not None else 0.0 for b, r in zip(boxes, references)]
        return {
            "accuracy": rec_accuracy(boxes, references), "miou": sum(ious) / n if n else 0.0,
            "parse_rate": sum(b is not None for b in boxes) / n if n else 0.0, "n": n,
        }
    if family == "boxes":
        return {**box_set_metrics(predictions, references), "n": n}
    if family == "vqa":
        return {"accuracy": vqa_score(predictions, references), "n": n}
    if family == "yesno":
        return {**yes_no_metrics(predictions, references), "n": n}
    if family == "count":
        return {**count_metrics(predictions, references), "n": n}
    if family == "exact":
        return {"accuracy": exact_match_accuracy(predictions, references), "n": n}
    return {"cider": cider_d(predictions, references)[0], "n": n}


def reference_for(sample: Sample) -> Any:
    """The structured reference `score_predictions` expects for this sample's task."""
    name = sample.task_name
    if name == "rec":
        return sample.regions[0].box
    if name == "find_all":
        return [r.box for r in sample.regions]
    if name == "yesno":
        if sample.yes_no is None:
            raise ValueError(f"sample {sample.id} has no yes/no label")
        return sample.yes_no
    if name == "count":
        if sample.count is None:
            raise ValueError(f"sample {sample.id} has no count")
        return sample.count
    return sample.answers or [sample.answer]


def score_samples(predictions: Mapping[str, str], samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Scores per task name for predictions keyed by sample id; samples without a
    prediction are skipped (the caller decides whether that is an error)."""
    grouped: dict[str, tuple[list[str], list[Any]]] = {}
    for s in samples:
        if s.id in predictions:
            preds, refs = grouped.setdefault(s.task_name, ([], []))
            preds.append(predictions[s.id])
            refs.append(reference_for(s))
    return {task: score_predictions(task, p, r) for task, (p, r) in sorted(grouped.items())}


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
