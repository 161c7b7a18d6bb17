"""Metric checks against hand-computed values."""
import math

import pytest

from lion_ros.answers import parse_verdict
from lion_ros.api import TaskKind
from lion_ros.data.sample import RegionTarget, Sample
from lion_ros.eval.metrics import (
    box_set_metrics,
    caption_tokenize,
    cider_d,
    count_metrics,
    exact_match_accuracy,
    iou,
    normalize_vqa_answer,
    parse_boxes,
    parse_count,
    parse_yes_no,
    rec_accuracy,
    score_predictions,
    score_samples,
    vqa_accuracy,
    vqa_process_punctuation,
    vqa_score,
    yes_no_metrics,
)


def test_iou_hand_values():
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # touching edges
    assert iou([0, 0, 0, 1], [0, 0, 0, 1]) == 0.0  # degenerate


def test_parse_boxes_formats():
    assert parse_boxes("Answer: [0.440,0.060,0.650,0.367]") == [(0.44, 0.06, 0.65, 0.367)]
    assert parse_boxes("[0.1, 0.2, 0.3, 0.4]") == [(0.1, 0.2, 0.3, 0.4)]
    assert parse_boxes("[0.1,0.2,0.3,0.4;0.5,0.5,1.2,0.9]") == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 1.0, 0.9)]
    assert parse_boxes("a cup [0.1,0.2,0.3,0.4] and [0.1,0.2]") == [(0.1, 0.2, 0.3, 0.4)]
    assert parse_boxes("no box here") == []
    assert parse_boxes("[__import__('os')]") == []


def test_rec_accuracy_threshold_and_unparseable():
    refs = [(0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]
    preds = [
        "Answer: [0.000,0.000,0.500,0.500]",  # IoU 1
        "Answer: [0.000,0.000,0.500,0.250]",  # IoU exactly 0.5 counts
        "Answer: [0.000,0.000,0.500,0.240]",  # IoU 0.48
        "I cannot find it",
    ]
    assert rec_accuracy(preds, refs) == pytest.approx(0.5)
    assert rec_accuracy([(0, 0, 0.5, 0.5)], [(0, 0, 0.5, 0.5)]) == 1.0
    with pytest.raises(ValueError):
        rec_accuracy(preds[:2], refs)


def test_box_set_metrics():
    refs = [[(0, 0, 0.2, 0.2), (0.5, 0.5, 0.7, 0.7)], [(0, 0, 1, 1)]]
    preds = ["Answer: [0.000,0.000,0.200,0.200;0.900,0.900,1.000,1.000]", "Answer: [0.000,0.000,1.000,1.000]"]
    m = box_set_metrics(preds, refs)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["exact"] == pytest.approx(0.5)


def test_vqa_normalisation():
    assert normalize_vqa_answer("Two") == "2"
    assert normalize_vqa_answer("a dog.") == "dog"
    assert normalize_vqa_answer("The  Red   Car!") == "red car"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("ten") == "10"
    assert vqa_process_punctuation("1,000") == "1000"  # digit comma digit: punctuation removed
    assert vqa_process_punctuation("yes,no") == "yes no"  # otherwise replaced by a space
    assert normalize_vqa_answer("3.5") == "3.5"  # decimal point kept


def test_vqa_accuracy_leave_one_out():
    gts = ["2"] * 3 + ["3"] * 7
    # 3 subsets drop a "2" (2 matches -> 2/3), 7 keep all three (-> 1): (2 + 7) / 10.
    assert vqa_accuracy("2", gts) == pytest.approx(0.9)
    assert vqa_accuracy("Two", gts) == pytest.approx(0.9)
    assert vqa_accuracy("3", gts) == pytest.approx(1.0)
    one = ["cat"] + ["dog"] * 9
    assert vqa_accuracy("cat", one) == pytest.approx(0.3)  # 9 subsets with 1 match (1/3), 1 with none
    assert vqa_accuracy("bird", one) == 0.0


def test_vqa_accuracy_official_quirk_unanimous_answers_not_normalised():
    # The official evaluator only normalises ground truth when annotators disagree.
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("two", ["Two"] * 10) == 0.0


def test_vqa_single_reference_falls_back_to_exact_match():
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0
    assert vqa_score(["2", "bird"], [["2"] * 3 + ["3"] * 7, ["cat"] + ["dog"] * 9]) == pytest.approx(0.45)


def test_yes_no_metrics_hand_values():
    preds = ["yes", "no", "Yes, it is.", "No.", "not sure"]
    refs = [True, True, True, False, False]
    m = yes_no_metrics(preds, refs)
    # Strict: "not sure" states no verdict, so it is wrong although the reference is "no".
    # tp=2 fp=0 fn=1, right: 3 of 5.
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert m["yes_ratio"] == pytest.approx(0.4)
    assert m["no_verdict_rate"] == pytest.approx(0.2)
    # POPE reads "not sure" as no: right, 4 of 5.
    assert m["accuracy_pope"] == pytest.approx(0.8)
    assert m["recall_pope"] == pytest.approx(2 / 3)
    assert m["yes_ratio_pope"] == pytest.approx(0.4)
    assert yes_no_metrics(["yes"], ["no"])["accuracy"] == 0.0
    assert yes_no_metrics([True, False], ["yes", "no"])["accuracy"] == 1.0  # bools are verdicts as they stand
    with pytest.raises(ValueError, match="states no verdict"):
        yes_no_metrics(["yes"], ["pink"])


def test_an_answer_without_a_verdict_is_wrong_for_yes_and_for_no():
    m = yes_no_metrics(["pink", "pink"], [True, False])
    assert m["accuracy"] == 0.0
    assert m["no_verdict_rate"] == 1.0
    assert m["yes_ratio"] == 0.0 and m["recall"] == 0.0
    # POPE's rule reads "pink" as yes: right half the time, which is what the strict score is for.
    assert m["accuracy_pope"] == 0.5
    assert m["yes_ratio_pope"] == 1.0


def test_pope_rule():
    assert parse_yes_no("There is no cat.") is False
    assert parse_yes_no("Yes. It is not red.") is True  # only the first sentence counts (POPE)
    assert parse_yes_no("pink") is True  # no "no"/"not": a yes
    # a grounded answer's decimal points are not sentence ends: the verdict after the boxes counts
    assert parse_yes_no("the cup[0.120,0.400,0.310,0.770] is left of the ball[0.500,0.410,0.600,0.620]: no") is False
    assert parse_yes_no("the cup[0.120,0.400,0.310,0.770] is left of the ball[0.500,0.410,0.600,0.620]: yes") is True


def test_parse_verdict_plain_answers():
    assert parse_verdict("yes") == "yes"
    assert parse_verdict("No.") == "no"
    assert parse_verdict("YES!") == "yes"
    assert parse_verdict("Yes, it is.") == "yes"
    assert parse_verdict("Yes. It is not red.") == "yes"
    assert parse_verdict("I think the answer is no") == "no"
    for no_verdict in ("pink", "", "not sure", "It is not.", "maybe", "the pink ball"):
        assert parse_verdict(no_verdict) is None, no_verdict


def test_parse_verdict_reads_the_reasoned_and_grounded_forms_at_their_verdict():
    assert parse_verdict("the cup 23, the red ball 61: left, yes") == "yes"
    assert parse_verdict("the cup 23, the red ball 61: left, no") == "no"
    # a "no" inside the evidence is not the verdict (POPE's rule takes it for one)
    assert parse_verdict("the no entry sign 23, the cup 61: left, yes") == "yes"
    assert parse_yes_no("the no entry sign 23, the cup 61: left, yes") is False
    assert parse_verdict("the cup[0.120,0.400,0.310,0.770] is left of the ball[0.500,0.410,0.600,0.620]: no") == "no"
    # cut off before the verdict, or contradicting itself: no verdict
    assert parse_verdict("the cup 23, the red ball 61: left,") is None
    assert parse_verdict("the cup 23, the red ball 61: yes, left") is None
    assert parse_verdict("no, the cup 23, the red ball 61: left, yes") is None


def test_parse_verdict_needs_whole_words():
    for text in ("north", "nothing", "the cup is north of the ball", "nothing there", "yesterday", "nope", "Noon"):
        assert parse_verdict(text) is None, text
    assert parse_verdict("No, nothing is in front of it.") == "no"
    assert parse_verdict("yes, north of it") == "yes"
    assert parse_yes_no("nothing") is True  # POPE only looks for the words "no" and "not"


def test_count_parsing():
    assert parse_count("3") == 3
    assert parse_count("three") == 3
    assert parse_count("Three.") == 3
    assert parse_count("There are three cups.") == 3
    assert parse_count("I see 12 cups") == 12
    assert parse_count("0") == 0
    assert parse_count("zero") == 0
    assert parse_count("twenty") == 20
    assert parse_count("3 (three)") == 3  # one count, written twice
    for no_count in ("a few", "many", "none", "some cups", "", "3 or 4", "two or three", "2.5", "twenty-one",
                     "pink"):
        assert parse_count(no_count) is None, no_count


def test_count_metrics():
    m = count_metrics(["3", "two", "a few", "4"], [3, 2, 1, 5])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["no_count_rate"] == pytest.approx(0.25)
    assert count_metrics([], []) == {"accuracy": 0.0, "no_count_rate": 0.0}


def test_exact_match():
    assert exact_match_accuracy(["Red.", "the large ball", "blue"], ["red", ["large ball", "big ball"], "green"]) == (
        pytest.approx(2 / 3)
    )


def test_cider_identical_captions_two_image_corpus():
    # idf("a") = log 2 - log 2 = 0; "cat"/"a cat" have idf log 2. Identical unigram and bigram
    # vectors give cosine 1 for n=1,2 and 0 for n=3,4: (1 + 1 + 0 + 0) / 4 * 10 = 5.
    score, per_image = cider_d(["a cat", "a dog"], [["a cat"], ["a dog"]])
    assert per_image == pytest.approx([5.0, 5.0])
    assert score == pytest.approx(5.0)


def test_cider_clipping_hand_value():
    # Candidate "cat cat": unigram tf-idf 2L vs reference L (L = log 2). Clipped dot product
    # min(2L, L) * L = L^2, norms 2L and L -> 0.5 for n=1; the bigram "cat cat" is absent -> 0;
    # both have one bigram so no length penalty: 0.5 / 4 * 10 = 1.25.
    score, per_image = cider_d(["cat cat", "a dog"], [["a cat"], ["a dog"]])
    assert per_image == pytest.approx([1.25, 5.0])
    assert score == pytest.approx(3.125)


def test_cider_length_penalty_matches_formula():
    # Two images (with one, every idf is 0). Exact copies score 10 per n-gram order that
    # exists: "a blue ball" has no 4-gram, so 10 * 3 / 4.
    refs = [["a red cup on a table"], ["a blue ball"]]
    _, per_image = cider_d(["a red cup on a table", "a blue ball"], refs)
    assert per_image == pytest.approx([10.0, 7.5])
    # One extra word: one bigram longer, so at most 10 * exp(-1 / (2 * 6^2)).
    _, longer = cider_d(["a red cup on a table today", "a blue ball"], refs)
    assert longer[0] < per_image[0]
    penalty = math.exp(-(1 ** 2) / (2 * 6.0 ** 2))
    assert longer[0] < 10.0 * penalty + 1e-9


def test_cider_matches_coco_caption_reference_value():
    # Value produced by pycocoevalcap 1.2 `Cider().compute_score` on the same tokens.
    gts = [["a cat sits on the mat", "the cat is on a mat"], ["a dog runs in the park", "the dog is running"]]
    res = ["a cat on the mat", "A dog is running in the park, today."]
    score, per_image = cider_d(res, gts)
    assert per_image == pytest.approx([3.48318606, 2.99300663], abs=1e-6)
    assert score == pytest.approx(3.2380963470833684, abs=1e-9)


def test_caption_tokenize_drops_boxes_and_punctuation():
    assert caption_tokenize("A red cup [0.1,0.2,0.3,0.4], on the table.") == ["a", "red", "cup", "on", "the", "table"]


def test_score_predictions_dispatch():
    assert score_predictions("rec", ["Answer: [0.0,0.0,0.5,0.5]"], [(0, 0, 0.5, 0.5)])["accuracy"] == 1.0
    assert score_predictions("yesno", ["no"], ["no"])["accuracy"] == 1.0
    assert score_predictions("count", ["3"], [3])["accuracy"] == 1.0
    assert score_predictions("attribute", ["red"], ["red"])["accuracy"] == 1.0
    assert score_predictions("vqa", ["2"], [["2"] * 10])["accuracy"] == 1.0
    assert score_predictions("caption", ["a cat", "a dog"], [["a cat"], ["a dog"]])["cider"] == pytest.approx(5.0)
    assert score_predictions("find_all", ["[0,0,1,1]"], [[(0, 0, 1, 1)]])["f1"] == 1.0
    with pytest.raises(ValueError, match="unknown task"):
        score_predictions("ocr", [], [])


def test_score_samples_groups_by_task():
    def sample(i, name, **kw):
        return Sample(id=str(i), question="q", answer="a", task=TaskKind.IMAGE, task_name=name, source="t",
                      split="test", **kw)

    samples = [
        sample(0, "rec", regions=[RegionTarget("x", (0.0, 0.0, 0.5, 0.5))]),
        sample(1, "yesno", yes_no=True),
        sample(2, "count", count=2),
        sample(3, "vqa", answers=["2"] * 10),
        sample(4, "count", count=5),
    ]
    preds = {"0": "Answer: [0.000,0.000,0.500,0.500]", "1": "yes", "2": "two", "3": "2"}
    scores = score_samples(preds, samples)
    assert scores["rec"]["accuracy"] == 1.0
    assert scores["yesno"]["accuracy"] == 1.0
    assert scores["count"] == {"accuracy": 1.0, "no_count_rate": 0.0, "n": 1.0}  # the unanswered sample is skipped
    assert scores["vqa"]["accuracy"] == 1.0
