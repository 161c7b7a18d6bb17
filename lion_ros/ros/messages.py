"""Outcomes and errors as ROS messages: Ask responses/results, SceneAnswer, Detection2DArray."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from lion_ros.api import GroundedBox
from lion_ros.msg import Position3D, SceneAnswer, Timings
from lion_ros.serving.errors import AskError, ErrorCode
from lion_ros.serving.requests import TASK_VALUES, Outcome, Position


def detections(header: Any, boxes: Sequence[GroundedBox]) -> Detection2DArray:
    """Boxes in the source image's pixels; the source header on the array and every detection."""
    array = Detection2DArray(header=header)
    for box in boxes:
        det = Detection2D(header=header)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = box.phrase
        hyp.hypothesis.score = float(box.score)
        det.results.append(hyp)
        det.bbox.center.position.x = (box.x1 + box.x2) / 2.0
        det.bbox.center.position.y = (box.y1 + box.y2) / 2.0
        det.bbox.size_x = float(box.width)
        det.bbox.size_y = float(box.height)
        array.detections.append(det)
    return array


def positions(points: Sequence[Position]) -> list[Position3D]:
    out = []
    for p in points:
        msg = Position3D(valid=p is not None)
        if p is not None:
            msg.point.x, msg.point.y, msg.point.z = (float(v) for v in p)
        out.append(msg)
    return out


def timings(outcome: Outcome) -> Timings:
    t = outcome.answer.timings
    return Timings(image_encode_ms=0.0 if outcome.image_features_reused else float(t.image_encode_ms),
                   prefill_ms=float(t.prefill_ms), decode_ms=float(t.decode_ms),
                   total_ms=float(outcome.total_ms), tokens_generated=int(t.tokens_generated),
                   image_features_reused=outcome.image_features_reused)


def fill_result(result: Any, outcome: Outcome | None = None, error: AskError | None = None,
                request_id: str = "") -> Any:
    """Fill an Ask.Response, Ask action Result or SceneAnswer from an outcome or an error."""
    if outcome is not None:
        header = outcome.request.frame.header
        result.success, result.error_code, result.message = True, ErrorCode.OK.value, ""
        result.request_id = outcome.request.request_id
        result.answer = outcome.answer.text
        result.task = TASK_VALUES[outcome.answer.task]
        result.detections = detections(header, outcome.answer.boxes)
        result.positions = positions(outcome.positions)
        result.timings = timings(outcome)
    else:
        assert error is not None
        result.success, result.error_code, result.message = False, int(error.code), str(error)
        result.request_id = request_id
    return result


def scene_answer(outcome: Outcome | None, error: AskError | None, request: Any) -> SceneAnswer:
    msg = fill_result(SceneAnswer(), outcome, error, request.request_id)
    msg.header = request.frame.header
    msg.camera, msg.question = request.camera, request.question
    msg.tags = list(outcome.tags if outcome else request.tags)
    if outcome is None:
        msg.task = TASK_VALUES.get(request.task, 0)
    return msg
