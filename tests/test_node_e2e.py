"""lion_node end to end with real model backends (no scripted runtime): tiny random LION models
built by the node's own runtime factory, real rclpy over Fast DDS."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="rclpy comes from scripts/bootstrap.sh (make test)")
pytestmark = pytest.mark.ros

from ros_harness import Harness, rgb_image

from lion_ros.msg import ErrorCode
from lion_ros.serving.parameters import NodeParams
from lion_ros.serving.runtime_factory import make_runtime


def ask_both(harness: Harness):
    frame = harness.send_frame("camera", rgb_image(640, 360, stamp_sec=77, frame_id="cam_optical"))
    region = harness.ask("where is the red cup?", max_new_tokens=40)
    image = harness.ask("what is on the table?", max_new_tokens=8)
    return frame, region, image


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_node_answers_with_a_real_backend(model_dir, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("LION_ENGINE_CACHE", str(tmp_path / "engines"))  # ONNX export lands here
    runtime = make_runtime(NodeParams(model_path=str(model_dir), backend=backend, device="cpu"))
    assert runtime.name == backend
    harness = Harness(runtime, backend=backend)
    try:
        frame, region, image = ask_both(harness)
    finally:
        harness.close()
    assert region.success and region.error_code == ErrorCode.OK, region.message
    # A random model still grounds: coordinate questions are box-constrained.
    assert region.task == 2 and region.answer.startswith("Answer:")
    assert region.detections.header == frame.header
    assert len(region.detections.detections) >= 1
    for det in region.detections.detections:
        box = det.bbox
        assert box.center.position.x - box.size_x / 2 >= 0 and box.center.position.x + box.size_x / 2 <= 640
        assert box.center.position.y - box.size_y / 2 >= 0 and box.center.position.y + box.size_y / 2 <= 360
        assert det.results[0].hypothesis.class_id == "red cup"
        assert 0.0 < det.results[0].hypothesis.score <= 1.0
    assert image.success and image.task == 1
    assert region.timings.tokens_generated > 0 and region.timings.decode_ms > 0


def test_onnxruntime_and_pytorch_give_the_node_the_same_answers(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LION_ENGINE_CACHE", str(tmp_path / "engines"))
    answers = {}
    for backend in ("pytorch", "onnxruntime"):
        harness = Harness(make_runtime(NodeParams(model_path=str(model_dir), backend=backend)), backend=backend)
        try:
            _, region, image = ask_both(harness)
        finally:
            harness.close()
        answers[backend] = (region.answer, image.answer)
    assert answers["pytorch"] == answers["onnxruntime"]
