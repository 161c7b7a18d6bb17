"""Evaluation: pure scoring functions (`lion_ros.eval.metrics`)."""
from lion_ros.eval.metrics import (
    box_set_metrics,
    cider_d,
    count_metrics,
    exact_match_accuracy,
    iou,
    parse_boxes,
    parse_count,
    parse_verdict,
    parse_yes_no,
    rec_accuracy,
    reference_for,
    score_predictions,
    score_samples,
    vqa_accuracy,
    vqa_score,
    yes_no_metrics,
)

__all__ = [
    "box_set_metrics", "cider_d", "count_metrics", "exact_match_accuracy", "iou", "parse_boxes", "parse_count",
    "parse_verdict", "parse_yes_no", "rec_accuracy", "reference_for", "score_predictions", "score_samples",
    "vqa_accuracy", "vqa_score", "yes_no_metrics",
]
