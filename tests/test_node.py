"""lion_node over real DDS: the node in one rclpy context, a client in another (ros_harness).

The model is ScriptedRuntime (see ros_harness): these tests are about the node, not the model.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy comes from scripts/bootstrap.sh (make test)")
pytestmark = pytest.mark.ros

import itertools

from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_harness import CUP_BOX, ScriptedRuntime, result_of, rgb_image, wait_for
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from lion_ros.action import Ask as AskAction
from lion_ros.msg import ErrorCode, SceneAnswer, StandingQuery
from lion_ros.srv import SetStandingQueries


@pytest.fixture()
def harness(make_harness):
    return make_harness()


def expected_box(width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = CUP_BOX
    return ((x1 + x2) / 2 * width, (y1 + y2) / 2 * height, (x2 - x1) * width, (y2 - y1) * height)


def box_of(det: Detection2D) -> tuple[float, float, float, float]:
    return (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y)


def test_detections_keep_the_source_header_and_pixels_of_a_non_square_image(harness):
    detections = harness.collect(Detection2DArray, "/lion_node/detections")
    answers = harness.collect(SceneAnswer, "/lion_node/answers")
    annotated = harness.collect(Image, "/lion_node/annotated")
    frame = harness.send_frame("camera", rgb_image(640, 360, stamp_sec=1234, frame_id="cam_optical"))

    res = harness.ask("where is the red cup?")
    assert res.success and res.error_code == ErrorCode.OK, res.message
    assert res.task == 2 and res.answer.startswith("the red cup")
    (det,) = res.detections.detections
    assert det.results[0].hypothesis.class_id == "the red cup"
    assert det.results[0].hypothesis.score == pytest.approx(0.9)
    assert box_of(det) == pytest.approx(expected_box(640, 360))  # (240, 270, 160, 180)
    assert res.detections.header == frame.header and det.header == frame.header
    assert res.timings.total_ms > 0 and res.timings.tokens_generated == 4

    wait_for(lambda: detections and answers and annotated, what="published results")
    assert detections[0].header == frame.header and box_of(detections[0].detections[0]) == box_of(det)
    assert answers[0].header == frame.header and answers[0].camera == "camera" and answers[0].success
    assert annotated[0].header == frame.header and (annotated[0].width, annotated[0].height) == (640, 360)

    # Nothing grounded still publishes: an empty array with the source header ("seen nothing").
    res = harness.ask("what is on the table?")
    assert res.success and res.task == 1 and not res.detections.detections
    wait_for(lambda: len(detections) == 2, what="an empty detection array")
    assert detections[1].header == frame.header and not detections[1].detections


def test_repeated_questions_about_one_frame_reuse_its_encoding(harness):
    harness.send_frame("camera")
    first = harness.ask("where is the red cup?")
    second = harness.ask("what is on the table?")
    assert first.success and second.success
    assert not first.timings.image_features_reused and second.timings.image_features_reused
    assert second.timings.image_encode_ms == 0.0
    encodes = harness.runtime.encodes
    harness.send_frame("camera")  # a new stamp is a new frame
    assert not harness.ask("what is on the table?").timings.image_features_reused
    assert harness.runtime.encodes == encodes + 1


def test_action_streams_partial_answers(make_harness):
    harness = make_harness(ScriptedRuntime(token_delay_s=0.03))
    harness.send_frame("camera")
    assert harness.action_client.wait_for_server(timeout_sec=10.0)
    feedback = []
    goal = AskAction.Goal(question="where is the red cup?")
    sent = harness.action_client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
    handle = result_of(sent)
    wrapped = result_of(handle.get_result_async())
    assert wrapped.status == GoalStatus.STATUS_SUCCEEDED and wrapped.result.success
    decoding = [f.partial_answer for f in feedback if f.stage == "decoding"]
    assert feedback[0].stage == "queued" and len(decoding) == 4
    assert all(b.startswith(a) for a, b in itertools.pairwise(decoding))
    assert decoding[-1] == wrapped.result.answer
    assert len(wrapped.result.detections.detections) == 1


def test_action_cancel_stops_generation_and_the_node_keeps_serving(make_harness):
    harness = make_harness(ScriptedRuntime(token_delay_s=0.3))
    harness.send_frame("camera")
    assert harness.action_client.wait_for_server(timeout_sec=10.0)
    feedback = []
    handle = result_of(harness.action_client.send_goal_async(
        AskAction.Goal(question="where is the red cup?"), feedback_callback=lambda m: feedback.append(m.feedback)))
    wait_for(lambda: any(f.stage == "decoding" for f in feedback), what="the first token")
    result_of(handle.cancel_goal_async())
    wrapped = result_of(handle.get_result_async())
    assert wrapped.status == GoalStatus.STATUS_CANCELED
    assert not wrapped.result.success and wrapped.result.error_code == ErrorCode.CANCELED
    harness.runtime.token_delay_s = 0.0
    assert harness.ask("what is on the table?").success


def test_each_error_has_its_code_and_the_node_keeps_serving(make_harness):
    harness = make_harness(cameras=["camera", "quiet", "old"], max_question_chars=40, max_frame_age_s=0.4)
    harness.send_frame("old", rgb_image(64, 48, 7))
    time.sleep(0.5)
    harness.send_frame("camera")
    bad_encoding = rgb_image(8, 8, 9)
    bad_encoding.encoding = "yuv422"
    wrong_size = rgb_image(8, 8, 10)
    wrong_size.data = wrong_size.data[:-5]
    harness.runtime.fail_on = "explode"
    cases = [
        ({"question": ""}, ErrorCode.INVALID_ARGUMENT),
        ({"question": "   "}, ErrorCode.INVALID_ARGUMENT),
        ({"question": "x" * 41}, ErrorCode.INVALID_ARGUMENT),
        ({"question": "what?", "task": 7}, ErrorCode.INVALID_ARGUMENT),
        ({"question": "what?", "camera": "nowhere"}, ErrorCode.UNKNOWN_CAMERA),
        ({"question": "what?", "camera": "quiet"}, ErrorCode.NO_FRAME),
        ({"question": "what?", "camera": "old"}, ErrorCode.STALE_FRAME),
        ({"question": "what?", "image": bad_encoding}, ErrorCode.UNSUPPORTED_ENCODING),
        ({"question": "what?", "image": wrong_size}, ErrorCode.BAD_IMAGE),
        ({"question": "explode"}, ErrorCode.INTERNAL),
        ({"question": "explode"}, ErrorCode.INTERNAL),  # logged once, still answered
    ]
    for fields, code in cases:
        res = harness.ask(**fields)
        assert not res.success and res.error_code == code, (fields, res.error_code, res.message)
        assert res.message
        assert harness.ask("where is the red cup?").success  # still serving after every error
    # An image sent with the request is answered with its own header and pixels.
    inline = rgb_image(300, 200, 77, frame_id="handheld")
    res = harness.ask("where is the red cup?", image=inline)
    assert res.success and res.detections.header == inline.header
    assert box_of(res.detections.detections[0]) == pytest.approx(expected_box(300, 200))


def test_compressed_transport_and_a_corrupt_image(make_harness):
    harness = make_harness(image_transport="compressed")
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8 definitely not a jpeg")
    corrupt.header.stamp.sec = 5
    harness.send_frame("camera", corrupt, topic="/camera/image/compressed")
    res = harness.ask("where is the red cup?")
    assert not res.success and res.error_code == ErrorCode.BAD_IMAGE
    _ok, jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))
    good = CompressedImage(format="jpeg", data=jpeg.tobytes())
    good.header.stamp.sec, good.header.frame_id = 6, "remote_cam"
    harness.send_frame("camera", good, topic="/camera/image/compressed")
    res = harness.ask("where is the red cup?")
    assert res.success and res.detections.header == good.header
    assert box_of(res.detections.detections[0]) == pytest.approx(expected_box(320, 240))


def test_a_burst_beyond_the_queue_is_rejected_busy_and_the_rest_answered(make_harness):
    harness = make_harness(ScriptedRuntime(token_delay_s=0.1), queue_size=1)
    harness.send_frame("camera")
    assert harness.ask_client.wait_for_service(timeout_sec=10.0)
    from lion_ros.srv import Ask
    futures = [harness.ask_client.call_async(Ask.Request(question="where is the red cup?")) for _ in range(5)]
    results = [result_of(f, 20.0) for f in futures]
    codes = sorted(r.error_code for r in results)
    assert codes.count(ErrorCode.OK) >= 2 and codes.count(ErrorCode.BUSY) >= 1, codes
    assert set(codes) <= {ErrorCode.OK, ErrorCode.BUSY}
    # A request whose time runs out is answered TIMEOUT, and the node goes on.
    res = harness.ask("where is the red cup?", timeout_s=0.15)
    assert not res.success and res.error_code == ErrorCode.TIMEOUT
    harness.runtime.token_delay_s = 0.0
    assert harness.ask("where is the red cup?").success

    diagnostics = harness.collect(DiagnosticArray, "/diagnostics")
    wait_for(lambda: diagnostics, what="a diagnostics message")
    status = {s.name: {kv.key: kv.value for kv in s.values} for s in diagnostics[-1].status}
    requests = status["lion_node: requests"]
    assert int(requests["rejected_busy"]) >= 1 and int(requests["timeouts"]) == 1
    assert "total_ms_p95" in status["lion_node: latency"] and "queue_ms_p50" in status["lion_node: latency"]
    assert float(status["lion_node: camera camera"]["frame_age_s"]) >= 0


def test_lifecycle_transitions_and_enable(make_harness):
    harness = make_harness(autostart=False)
    harness.wait_for_services("change_state_client", "get_state_client", "enable_client")
    change, get_state, enable = harness.change_state_client, harness.get_state_client, harness.enable_client

    def transition(tid: int) -> bool:
        return result_of(change.call_async(ChangeState.Request(transition=Transition(id=tid)))).success

    def state() -> str:
        return result_of(get_state.call_async(GetState.Request())).current_state.label

    assert state() == "unconfigured"
    assert harness.ask("what?").error_code == ErrorCode.NOT_READY
    assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
    assert harness.ask("what?").error_code == ErrorCode.NOT_READY
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
    harness.send_frame("camera")
    assert harness.ask("what?").success

    assert result_of(enable.call_async(SetBool.Request(data=False))).success
    assert harness.ask("what?").error_code == ErrorCode.NOT_READY
    assert result_of(enable.call_async(SetBool.Request(data=True))).success
    assert harness.ask("what?").success

    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
    assert harness.ask("what?").error_code == ErrorCode.NOT_READY
    assert transition(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
    assert harness.node.frames is None  # runtime and frames released
    assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
    harness.send_frame("camera")
    assert harness.ask("what?").success


def test_two_cameras_share_one_node_and_runtime(make_harness):
    harness = make_harness(cameras=["front", "rear"])
    front = harness.send_frame("front", rgb_image(640, 480, 11, frame_id="front_optical"))
    rear = harness.send_frame("rear", rgb_image(320, 480, 12, frame_id="rear_optical"))
    res_front = harness.ask("where is the red cup?", camera="front")
    res_rear = harness.ask("where is the red cup?", camera="rear")
    res_default = harness.ask("where is the red cup?")  # the first camera is the default
    assert res_front.detections.header == front.header and res_rear.detections.header == rear.header
    assert res_default.detections.header == front.header and res_default.timings.image_features_reused
    assert box_of(res_front.detections.detections[0]) == pytest.approx(expected_box(640, 480))
    assert box_of(res_rear.detections.detections[0]) == pytest.approx(expected_box(320, 480))
    assert harness.runtime.encodes == 3  # warm-up + one per camera frame


def test_standing_queries_run_at_their_period_only_on_new_frames(make_harness):
    harness = make_harness(standing_queries=["|0.5|what is on the table?"])
    answers = harness.collect(SceneAnswer, "/lion_node/answers")

    def runs() -> int:
        return len([a for a in answers if a.question == "what is on the table?"])

    harness.send_frame("camera")
    wait_for(lambda: runs() >= 1, what="the first standing answer")
    first = runs()
    pub = harness.publisher(Image, "/camera/image")
    start = time.monotonic()
    stamp = 1000
    while time.monotonic() - start < 1.6:  # ~30 Hz for 1.6 s: due again at about +0.5, +1.0, +1.5 s
        stamp += 1
        pub.publish(rgb_image(160, 120, stamp))
        time.sleep(0.033)
    time.sleep(0.15)
    assert 2 <= runs() - first <= 4, runs() - first
    assert all(a.success and a.camera == "camera" for a in answers)
    during = runs()
    time.sleep(0.6)  # frames after the last run get one more run at the next period...
    settled = runs()
    assert settled - during <= 1
    time.sleep(0.6)  # ...and then, with no new frame, none
    assert runs() == settled

    set_client = harness.standing_client
    assert set_client.wait_for_service(timeout_sec=30.0)
    bad = SetStandingQueries.Request(queries=[StandingQuery(question="q", camera="nowhere", period_s=1.0)])
    assert not result_of(set_client.call_async(bad)).success
    good = SetStandingQueries.Request(queries=[StandingQuery(question="where is the red cup?", period_s=0.2)])
    assert result_of(set_client.call_async(good)).success
    harness.send_frame("camera")
    wait_for(lambda: any(a.question == "where is the red cup?" for a in answers), what="the new standing query")


def test_tags_come_from_the_request_or_the_upstream_topic(make_harness):
    harness = make_harness(tags_topic="tags")
    harness.send_frame("camera")
    upstream = Detection2DArray()
    for name in ("cup", "table", "cup"):
        det = Detection2D()
        det.results.append(ObjectHypothesisWithPose())
        det.results[0].hypothesis.class_id = name
        upstream.detections.append(det)
    pub = harness.publisher(Detection2DArray, "/camera/tags")
    wait_for(lambda: pub.get_subscription_count() > 0, what="the tags subscription")
    pub.publish(upstream)
    wait_for(lambda: harness.node.frames.tags("camera") == ["cup", "table"], what="upstream tags")
    assert harness.ask("what is on the table?").success
    assert harness.runtime.questions[-1][1] == ("cup", "table")
    assert harness.ask("what is on the table?", tags=["bowl"]).success
    assert harness.runtime.questions[-1][1] == ("bowl",)


def test_boxes_get_3d_points_from_depth_and_camera_info(harness):
    markers = harness.collect(MarkerArray, "/lion_node/markers")
    width, height, fx, fy, cx, cy = 640, 360, 500.0, 500.0, 319.5, 179.5
    depth = np.full((height, width), 3.0, np.float32)
    depth[180:360, 160:320] = 1.5  # the cup's box
    depth[200:220, 200:240] = 0.0  # holes and bad readings inside the box are ignored
    depth[250:260, 250:300] = np.nan
    depth[300:305, 170:200] = np.inf
    depth_msg = Image(height=height, width=width, encoding="32FC1", step=width * 4, data=depth.tobytes())
    depth_msg.header.frame_id = "front_optical"
    info = CameraInfo(width=width, height=height, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    frame = rgb_image(width, height, 55)
    harness.send_depth("camera", depth_msg, info)
    harness.send_frame("camera", frame)
    res = harness.ask("where is the red cup?")
    (pos,) = res.positions
    u, v = 240.0 - 0.5, 270.0 - 0.5  # box centre in pixel-centre coordinates
    assert pos.valid and pos.point.z == pytest.approx(1.5)
    assert (pos.point.x, pos.point.y) == pytest.approx(((u - cx) * 1.5 / fx, (v - cy) * 1.5 / fy))
    wait_for(lambda: markers, what="RViz markers")
    kinds = [m.type for m in markers[-1].markers if m.action == Marker.ADD]
    assert sorted(kinds) == sorted([Marker.SPHERE, Marker.TEXT_VIEW_FACING])
    assert all(m.header == frame.header for m in markers[-1].markers)
    # Without depth on a camera the position is present but invalid.
    assert not harness.ask("where is the red cup?", image=rgb_image(100, 100, 3)).positions[0].valid
