"""Property-based fuzzing (hypothesis) of every input lion_node takes.

Every field of an Ask request (service and action share it), and every field of the camera
topics' sensor_msgs/Image, CompressedImage, depth Image and CameraInfo, goes through the node's
own validation and conversion (lion_ros.serving: parameters.check_question, images, depth,
requests.RequestHandler.prepare and run). The property: each input ends in an answer or in an
AskError carrying a documented ErrorCode, never another exception; an answer's 3D points are
absent or finite and inside depth_range_m; an image over max_image_pixels is refused by
`prepare` (before the queue, before any decode). The messages here are duck-typed (the serving
layer takes any object with the message's fields) with values inside each field's ROS type.

The model is not under test: BoxRuntime stands in for it and grounds one box at a drawn place.

A smaller real-DDS subset (marked ros) sends hostile requests and camera frames through the
running node (scripted runtime, tests/ros_harness.py) and checks that each is answered with a
documented code and that the next good request is answered.
"""
from __future__ import annotations

import math
import struct
import threading
import time
import unicodedata
from array import array
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lion_ros.api import Answer, GroundedBox, StageTimings, TaskKind
from lion_ros.runtime.base import EncodedImage
from lion_ros.serving.errors import AskError, ErrorCode
from lion_ros.serving.frames import FrameStore
from lion_ros.serving.parameters import NodeParams
from lion_ros.serving.requests import Outcome, RequestHandler

UINT8, UINT16, UINT32 = 2**8 - 1, 2**16 - 1, 2**32 - 1
MAX_PIXELS = 48 * 48  # small, so drawn images fall on both sides of the bound
DEPTH_RANGE = [0.05, 50.0]
PARAMS = NodeParams(cameras=["cam", "other"], max_frame_age_s=0.0, max_image_pixels=MAX_PIXELS,
                    max_image_bytes=1 << 20, max_question_chars=64, depth_range_m=DEPTH_RANGE)
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "16UC1": 2, "mono16": 2, "32FC1": 4}
COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
OTHER_ENCODINGS = ("", "yuv422", "bayer_rggb8", "8UC3", "RGB8", "rgb8 ", "32FC3", "16SC1")
MAX_DRAWN_BYTES = 64 * 64 * 4
# Everything a hostile float field can hold: special values, absurd magnitudes, ordinary numbers.
HOSTILE_FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 3e38, -3e38, 1e-310,
                                            1e308]), st.floats(allow_nan=True, allow_infinity=True))
TEXT = st.text(max_size=80)  # any code point but surrogates: control, zero-width, combining, emoji


def f32(value: float) -> float:
    """The float32 a ROS float32 field carries: rounded, and infinite past float32's range."""
    if math.isfinite(value) and abs(value) >= 3.4e38:
        return math.copysign(math.inf, value)
    return float(np.float32(value))

# ----------------------------------------------------------------------------------------------
# Message strategies (values inside each field's ROS type)


def dims() -> st.SearchStrategy[int]:
    """Mostly small sizes (cheap, around MAX_PIXELS), sometimes extreme ones."""
    return st.one_of(st.integers(0, 72), st.sampled_from([UINT32, 2**31, 65535, 20000, 8000, 4097]))


@st.composite
def headers(draw) -> SimpleNamespace:
    stamp = SimpleNamespace(sec=draw(st.integers(-2**31, 2**31 - 1)), nanosec=draw(st.integers(0, UINT32)))
    return SimpleNamespace(stamp=stamp, frame_id=draw(TEXT))


@st.composite
def payload(draw, size: int) -> bytes:
    """`size` bytes tiled from a short drawn pattern: raw bytes, or little/big-endian floats or
    uint16s, so float encodings see NaN, inf, negative and absurd depths."""
    kind = draw(st.sampled_from(["bytes", "f32le", "f32be", "u16le"]))
    if kind == "bytes":
        pattern = draw(st.binary(min_size=1, max_size=16))
    elif kind == "u16le":
        values = draw(st.lists(st.integers(0, UINT16), min_size=1, max_size=4))
        pattern = struct.pack(f"<{len(values)}H", *values)
    else:
        values = [f32(v) for v in draw(st.lists(HOSTILE_FLOATS, min_size=1, max_size=4))]
        pattern = struct.pack(("<" if kind == "f32le" else ">") + "f" * len(values), *values)
    return (pattern * (size // len(pattern) + 1))[:size]


@st.composite
def images(draw, encodings: tuple[str, ...]) -> SimpleNamespace:
    """sensor_msgs/Image: every field drawn; data consistent with height*step, or not."""
    encoding = draw(st.one_of(st.sampled_from(encodings), st.sampled_from(OTHER_ENCODINGS), st.text(max_size=12)))
    width, height = draw(dims()), draw(dims())
    bpp = BYTES_PER_PIXEL.get(encoding) or draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["exact", "padded", "arbitrary"]))
    if layout != "arbitrary" and width * height * bpp <= MAX_DRAWN_BYTES:
        step = width * bpp + (draw(st.integers(1, 16)) if layout == "padded" else 0)
        size = height * step
    else:
        step, size = draw(st.integers(0, UINT32)), draw(st.integers(0, 4096))
    return SimpleNamespace(header=draw(headers()), height=height, width=width, encoding=encoding,
                           is_bigendian=draw(st.integers(0, UINT8)), step=step,
                           data=array("B", draw(payload(size))))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", 0)


@st.composite
def compressed_images(draw) -> SimpleNamespace:
    """sensor_msgs/CompressedImage: real PNG/JPEG, truncated ones, headers claiming any size
    (decompression bombs), and noise with or without a PNG/JPEG signature."""
    kind = draw(st.sampled_from(["png", "jpeg", "truncated", "png_header", "jpeg_header", "noise", "empty"]))
    if kind in ("png", "jpeg", "truncated"):
        w, h = draw(st.integers(1, 72)), draw(st.integers(1, 72))
        rgb = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = cv2.imencode(".jpg" if kind == "jpeg" or draw(st.booleans()) else ".png", rgb)[1].tobytes()
        if kind == "truncated":
            data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "png_header":
        ihdr = struct.pack(">IIBBBBB", draw(st.integers(0, UINT32)), draw(st.integers(0, UINT32)),
                           draw(st.sampled_from([1, 2, 4, 8, 16])), draw(st.integers(0, 6)), 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + draw(st.binary(max_size=64))
    elif kind == "jpeg_header":
        height, width = draw(st.integers(0, UINT16)), draw(st.integers(0, UINT16))
        sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00" * 3
        app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        data = b"\xff\xd8" + (app0 if draw(st.booleans()) else b"") + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) \
            + sof + draw(st.binary(max_size=64))
    elif kind == "noise":
        signature = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff"]))
        data = signature + draw(st.binary(max_size=256))
    else:
        data = b""
    fmt = draw(st.one_of(st.sampled_from(["png", "jpeg", "rgb8; jpeg compressed bgr8", ""]), TEXT))
    return SimpleNamespace(header=draw(headers()), format=fmt, data=array("B", data))


@st.composite
def camera_infos(draw) -> SimpleNamespace:
    """sensor_msgs/CameraInfo: every field; K plausible (points get computed) or hostile."""
    hostile_k = st.lists(HOSTILE_FLOATS, min_size=9, max_size=9)
    plausible_k = st.builds(lambda f, g, cx, cy: [f, 0.0, cx, 0.0, g, cy, 0.0, 0.0, 1.0],
                            st.floats(1.0, 2000.0), st.floats(1.0, 2000.0), st.floats(0.0, 80.0), st.floats(0.0, 80.0))
    roi = SimpleNamespace(x_offset=draw(st.integers(0, UINT32)), y_offset=draw(st.integers(0, UINT32)),
                          height=draw(st.integers(0, UINT32)), width=draw(st.integers(0, UINT32)),
                          do_rectify=draw(st.booleans()))
    return SimpleNamespace(
        header=draw(headers()), height=draw(dims()), width=draw(dims()), distortion_model=draw(TEXT),
        d=draw(st.lists(HOSTILE_FLOATS, max_size=8)), k=draw(st.one_of(plausible_k, hostile_k)),
        r=draw(st.lists(HOSTILE_FLOATS, min_size=9, max_size=9)),
        p=draw(st.lists(HOSTILE_FLOATS, min_size=12, max_size=12)),
        binning_x=draw(st.integers(0, UINT32)), binning_y=draw(st.integers(0, UINT32)), roi=roi)


def good_image(width: int = 40, height: int = 30, stamp_sec: int = 7) -> SimpleNamespace:
    header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp_sec, nanosec=0), frame_id="cam_optical")
    return SimpleNamespace(header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
                           step=width * 3, data=array("B", bytes(width * height * 3)))


# Ask fields: each drawn over its whole ROS type (uint8 task, uint16 max_new_tokens, float32 timeout_s).
ASK_FIELDS = {
    "question": st.one_of(TEXT, st.sampled_from(["where is the red cup?", "\u200b\u200b", " \t\n", "\u0301",
                                                 "x" * 64, "x" * 65, "\u202e?"])),
    "camera": st.one_of(st.sampled_from(["", "cam", "other", "CAM", "cam ", "/cam", "cam|x"]), TEXT),
    "tags": st.lists(TEXT, max_size=6),
    "task": st.integers(0, UINT8),
    "max_new_tokens": st.integers(0, UINT16),
    "timeout_s": st.one_of(HOSTILE_FLOATS.map(f32), st.floats(0.0, 60.0)),
}

# ----------------------------------------------------------------------------------------------
# The node's request path, ROS-free


class BoxRuntime:
    """Stands in for the model: one box at the drawn fractions of whatever image it is given."""

    name = "box"

    def __init__(self, box: tuple[float, float, float, float] = (0.25, 0.25, 0.75, 0.75)):
        self.box = box

    def encode_image(self, rgb: np.ndarray) -> EncodedImage:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0
        return EncodedImage(features=None, width=rgb.shape[1], height=rgb.shape[0], encode_ms=0.0)

    def answer(self, image: EncodedImage, question: str, **_: Any) -> Answer:
        (x1, x2), (y1, y2) = sorted(self.box[::2]), sorted(self.box[1::2])
        box = GroundedBox("thing", x1 * image.width, y1 * image.height, x2 * image.width, y2 * image.height)
        return Answer("the thing", TaskKind.REGION, [box], StageTimings())


boxes = st.tuples(*[st.floats(0.0, 1.0)] * 4)


def handler_for(runtime: Any = None) -> RequestHandler:
    """A fresh store and handler: the encoded-frame cache keys on camera + stamp, and drawn
    stamps repeat across examples with other pixels."""
    return RequestHandler(PARAMS, FrameStore(PARAMS.cameras), runtime or BoxRuntime())


def answer_or_error(handler: RequestHandler, **fields: Any) -> tuple[str, Any]:
    """("prepare" | "run", ErrorCode) for a refused request, ("answer", Outcome) otherwise. Any
    other exception propagates and fails the property."""
    try:
        request = handler.prepare(**fields)
    except AskError as exc:
        return "prepare", documented(exc)
    try:
        outcome = handler.run(request, threading.Event(), time.monotonic(), 0.0)
    except AskError as exc:
        return "run", documented(exc)
    check_answer(outcome)
    return "answer", outcome


def documented(exc: AskError) -> ErrorCode:
    assert isinstance(exc.code, ErrorCode) and exc.code != ErrorCode.OK, exc.code
    assert str(exc), "an error reply needs a message"
    return exc.code


def check_answer(outcome: Outcome) -> None:
    assert outcome.rgb.dtype == np.uint8 and outcome.rgb.ndim == 3 and outcome.rgb.shape[2] == 3
    assert len(outcome.positions) == len(outcome.answer.boxes)
    for point in outcome.positions:
        if point is not None:
            assert all(math.isfinite(v) for v in point), point
            assert DEPTH_RANGE[0] <= point[2] <= DEPTH_RANGE[1], point


def over_limit(msg: SimpleNamespace) -> bool:
    return msg.width * msg.height > MAX_PIXELS


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


GOOD_REQUEST = {"question": "where is the red cup?", "camera": "cam", "image": None, "tags": [], "task": 0,
                "max_new_tokens": 0, "timeout_s": 0.0}


def check_ask(fields: dict[str, Any]) -> None:
    handler = handler_for()
    handler.store.put_image("cam", good_image(), False)
    where, _ = answer_or_error(handler, **fields)
    if where == "answer":  # README: 1..max_question_chars characters, some of them visible
        assert any(unicodedata.category(c)[0] in "LNPS" for c in fields["question"])
        assert len(fields["question"]) <= PARAMS.max_question_chars
        assert fields["task"] in (0, 1, 2) and math.isfinite(fields["timeout_s"]) and fields["timeout_s"] >= 0
    image = fields["image"]
    if image is not None and len(image.data) and over_limit(image):
        assert where == "prepare", "an image over max_image_pixels reached the worker"


@FUZZ
@given(image=st.one_of(st.none(), images(COLOUR_ENCODINGS)), **ASK_FIELDS)
def test_every_ask_field_gets_an_answer_or_a_documented_error(**fields):
    check_ask(fields)


@FUZZ
@given(name=st.sampled_from([*ASK_FIELDS, "image"]), data=st.data())
def test_each_ask_field_alone_in_a_good_request_gets_an_answer_or_a_documented_error(name, data):
    """One hostile field at a time: the other fields valid, so its own check is what answers."""
    strategy = ASK_FIELDS[name] if name in ASK_FIELDS else images(COLOUR_ENCODINGS)
    check_ask({**GOOD_REQUEST, name: data.draw(strategy, label=name)})


@FUZZ
@given(image=images(COLOUR_ENCODINGS), box=boxes)
def test_every_camera_image_field_gets_an_answer_or_a_documented_error(image, box):
    handler = handler_for(BoxRuntime(box))
    handler.store.put_image("cam", image, False)
    where, result = answer_or_error(handler, question="where is the thing?", camera="cam")
    if over_limit(image):
        assert (where, result) == ("prepare", ErrorCode.BAD_IMAGE)
    if where == "answer":
        assert result.rgb.shape == (image.height, image.width, 3)
    else:
        assert result in (ErrorCode.BAD_IMAGE, ErrorCode.UNSUPPORTED_ENCODING), result


@FUZZ
@given(msg=compressed_images())
def test_every_compressed_image_field_gets_an_answer_or_a_documented_error(msg):
    handler = handler_for()
    handler.store.put_image("cam", msg, True)
    start = time.monotonic()
    where, result = answer_or_error(handler, question="what is this?", camera="cam")
    if where != "answer":
        assert result == ErrorCode.BAD_IMAGE, result
    else:
        assert result.rgb.shape[0] * result.rgb.shape[1] <= MAX_PIXELS
    assert time.monotonic() - start < 1.0, "a small or refused image took over a second"


@pytest.mark.parametrize("width,height", [(20000, 20000), (8000, 8000), (4097, 4096)])
def test_a_compressed_bomb_is_refused_from_its_header(width, height):
    """A real PNG claiming 20000x20000 (all zeros compress to ~400 KiB): refused by prepare,
    before a decode, at once."""
    row = zlib_rows(width, height)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", row) + _png_chunk(b"IEND", b"")
    msg = SimpleNamespace(header=good_image().header, format="png", data=array("B", png))
    params = NodeParams(cameras=["cam"], max_frame_age_s=0.0)  # the default max_image_pixels
    handler = RequestHandler(params, FrameStore(["cam"]), BoxRuntime())
    handler.store.put_image("cam", msg, True)
    start = time.monotonic()
    with pytest.raises(AskError) as refused:
        handler.prepare("what is this?", "cam")
    assert refused.value.code == ErrorCode.BAD_IMAGE and "max_image_pixels" in str(refused.value)
    assert time.monotonic() - start < 0.1


def zlib_rows(width: int, height: int) -> bytes:
    """Compressed all-zero grey rows of a width x height PNG (filter byte 0 per row)."""
    import zlib

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    chunks = [compressor.compress(row) for _ in range(min(height, 64))]  # the header is what counts
    return b"".join(chunks) + compressor.flush()


@FUZZ
@given(depth=images(DEPTH_ENCODINGS), info=camera_infos(), box=boxes)
def test_every_depth_and_camera_info_field_gives_finite_points_or_none(depth, info, box):
    """A bad depth image or CameraInfo costs the 3D points (valid=false), never the answer."""
    handler = handler_for(BoxRuntime(box))
    handler.store.put_image("cam", good_image(), False)
    handler.store.put_depth("cam", depth)
    handler.store.put_info("cam", info)
    where, outcome = answer_or_error(handler, question="where is the thing?", camera="cam")
    assert where == "answer", outcome


def test_a_plausible_depth_and_camera_info_give_a_point():
    """The property above is not vacuous: a good depth image and K do give a point."""
    handler = handler_for(BoxRuntime((0.25, 0.25, 0.75, 0.75)))
    handler.store.put_image("cam", good_image(40, 30), False)
    depth = np.full((30, 40), 2.0, np.float32)
    handler.store.put_depth("cam", SimpleNamespace(header=good_image().header, height=30, width=40, encoding="32FC1",
                                                   is_bigendian=0, step=160, data=array("B", depth.tobytes())))
    handler.store.put_info("cam", SimpleNamespace(width=40, height=30, k=[50.0, 0, 20.0, 0, 50.0, 15.0, 0, 0, 1]))
    where, outcome = answer_or_error(handler, question="where is the thing?", camera="cam")
    assert where == "answer" and outcome.positions[0] is not None
    assert outcome.positions[0][2] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# The same inputs through the running node, over real DDS


ros = pytest.mark.ros
# No shrinking over DDS: each try takes up to seconds, so a failure is reported as drawn.
DDS = settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def to_ros(value: Any, msg: Any) -> Any:
    """Copy a drawn SimpleNamespace into a real message of the same shape."""
    for name, field_value in vars(value).items():
        if isinstance(field_value, SimpleNamespace):
            to_ros(field_value, getattr(msg, name))
        else:
            setattr(msg, name, field_value)
    return msg


@pytest.fixture(scope="module")
def harness():
    pytest.importorskip("rclpy", reason="rclpy comes from scripts/bootstrap.sh (make test)")
    from ros_harness import Harness

    h = Harness(cameras=["cam", "other"], max_image_pixels=MAX_PIXELS, max_question_chars=64)
    h.wait_for_services("ask_client")
    assert h.action_client.wait_for_server(timeout_sec=15.0), "~/ask action not discovered"
    yield h
    h.close()


@pytest.fixture(scope="module")
def compressed_harness():
    pytest.importorskip("rclpy", reason="rclpy comes from scripts/bootstrap.sh (make test)")
    from ros_harness import Harness

    h = Harness(cameras=["cam"], image_transport="compressed", use_depth=False, max_image_pixels=MAX_PIXELS)
    h.wait_for_services("ask_client")
    yield h
    h.close()


_stamps = iter(range(1_000_000, 2**31))  # unique stamps tell the harness that a message arrived


def dds_safe(msg: SimpleNamespace) -> None:
    """A unique stamp (how the harness sees the message arrive) and a frame_id without NUL: a
    DDS string ends at the first NUL, so the node would see a different header."""
    msg.header.stamp.sec = next(_stamps)
    msg.header.frame_id = msg.header.frame_id.replace("\x00", "")


def assert_good_request_answered(harness: Any) -> None:
    harness.send_frame("cam", _ros_image(good_image(stamp_sec=next(_stamps))))
    reply = harness.ask("where is the red cup?", camera="cam")
    assert reply.success and reply.error_code == ErrorCode.OK, reply.message


def _ros_image(value: SimpleNamespace) -> Any:
    from sensor_msgs.msg import Image

    return to_ros(value, Image())


@ros
@DDS
@given(via=st.sampled_from(["service", "action"]), image=st.one_of(st.none(), images(COLOUR_ENCODINGS)),
       **ASK_FIELDS)
def test_hostile_requests_through_the_node_are_answered_and_the_next_good_one_too(harness, via, image, **fields):
    from ros_harness import result_of

    from lion_ros.action import Ask as AskAction
    from lion_ros.srv import Ask

    request = (Ask.Request if via == "service" else AskAction.Goal)(**fields)
    if image is not None:
        request.image = _ros_image(image)
    if via == "service":
        reply = result_of(harness.ask_client.call_async(request), 20.0)
    else:
        handle = result_of(harness.action_client.send_goal_async(request), 20.0)
        assert handle.accepted
        reply = result_of(handle.get_result_async(), 20.0).result
    assert reply.error_code in {c.value for c in ErrorCode}
    assert reply.success == (reply.error_code == ErrorCode.OK)
    assert_good_request_answered(harness)


@ros
@DDS
@given(image=images(COLOUR_ENCODINGS), depth=images(DEPTH_ENCODINGS), info=camera_infos())
def test_hostile_camera_frames_through_the_node_are_answered_and_the_next_good_one_too(harness, image, depth, info):
    from sensor_msgs.msg import CameraInfo, Image

    store = harness.node.frames
    for msg in (image, depth, info):
        dds_safe(msg)
    depth_msg, info_msg = to_ros(depth, Image()), to_ros(info, CameraInfo())
    def holds(slot: int, msg: Any) -> Callable[[], bool]:
        return lambda: getattr(store.depth_and_info("cam")[slot], "header", None) == msg.header

    harness.deliver("/cam/depth", depth_msg, holds(0, depth_msg))
    harness.deliver("/cam/camera_info", info_msg, holds(1, info_msg))
    harness.send_frame("cam", _ros_image(image))
    reply = harness.ask("where is the red cup?", camera="cam")
    assert reply.error_code in {ErrorCode.OK, ErrorCode.BAD_IMAGE, ErrorCode.UNSUPPORTED_ENCODING}, reply.message
    for position in reply.positions:
        assert not position.valid or all(math.isfinite(v) for v in (position.point.x, position.point.y,
                                                                     position.point.z))
    assert_good_request_answered(harness)


@ros
@DDS
@given(msg=compressed_images())
def test_hostile_compressed_frames_through_the_node_are_answered_and_the_next_good_one_too(compressed_harness, msg):
    from sensor_msgs.msg import CompressedImage

    harness = compressed_harness
    dds_safe(msg)
    harness.send_frame("cam", to_ros(msg, CompressedImage()), topic="/cam/image/compressed")
    reply = harness.ask("what is this?", camera="cam")
    assert reply.error_code in {ErrorCode.OK, ErrorCode.BAD_IMAGE}, reply.message
    good = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    good_msg = SimpleNamespace(header=good_image(stamp_sec=next(_stamps)).header, format="png", data=array("B", good))
    harness.send_frame("cam", to_ros(good_msg, CompressedImage()), topic="/cam/image/compressed")
    reply = harness.ask("what is this?", camera="cam")
    assert reply.success and reply.error_code == ErrorCode.OK, reply.message
