"""The node's plain-Python pieces, without ROS: conversions, depth, worker, schedule, parameters."""
from __future__ import annotations

import array
import os
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hostile_images import zero_png

from lion_ros.runtime.base import RequestCancelled
from lion_ros.serving import images
from lion_ros.serving.depth import box_depth, box_position, scaled_k
from lion_ros.serving.errors import AskError, ErrorCode
from lion_ros.serving.frames import RATE_WINDOW_S, LruCache, ReceiveCounter
from lion_ros.serving.parameters import (
    NodeParams,
    StandingQuerySpec,
    check_question,
    check_standing_query,
    from_mapping,
    specs,
)
from lion_ros.serving.standing import StandingSchedule
from lion_ros.serving.worker import RequestWorker

RGB = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1).view(np.uint8) if pixels.dtype != np.uint8 else pixels.reshape(h, -1)
    rows = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]), ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((5, 7), 9, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_become_rgb_with_row_padding(encoding, pixels, pad):
    out = images.image_to_rgb(image_msg(np.ascontiguousarray(pixels), encoding, pad), 10**6)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_mono8_is_replicated_to_three_channels():
    grey = RGB[:, :, 0].copy()
    out = images.image_to_rgb(image_msg(grey[:, :, None], "mono8", pad=1), 10**6)
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_16uc1_millimetres_and_32fc1_metres(bigendian):
    mm = np.array([[0, 1500], [2000, 65535]], np.uint16)
    msg = image_msg(mm.astype(mm.dtype.newbyteorder(">" if bigendian else "<")), "16UC1", pad=2, bigendian=bigendian)
    out = images.depth_to_metres(msg, 10**6)
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(1.5) and out[1, 0] == pytest.approx(2.0)
    m = np.array([[0.0, np.inf], [np.nan, 1.25]], np.float32)
    out = images.depth_to_metres(image_msg(m, "32FC1"), 10**6)
    assert np.isnan(out[:1]).all() and np.isnan(out[1, 0]) and out[1, 1] == pytest.approx(1.25)


def test_bad_images_raise_their_codes():
    msg = image_msg(RGB, "rgb8")
    with pytest.raises(AskError) as err:
        images.image_to_rgb(SimpleNamespace(**{**vars(msg), "encoding": "yuv422"}), 10**6)
    assert err.value.code == ErrorCode.UNSUPPORTED_ENCODING
    for bad in ({"data": msg.data[:-1]}, {"step": 5}, {"height": 0, "data": b""}):
        with pytest.raises(AskError) as err:
            images.image_to_rgb(SimpleNamespace(**{**vars(msg), **bad}), 10**6)
        assert err.value.code == ErrorCode.BAD_IMAGE, bad
    with pytest.raises(AskError) as err:
        images.image_to_rgb(msg, max_bytes=10)
    assert err.value.code == ErrorCode.BAD_IMAGE


def test_compressed_images_decode_and_corrupt_ones_are_bad():
    _ok, png = cv2.imencode(".png", RGB[:, :, ::-1])
    out = images.compressed_to_rgb(SimpleNamespace(format="png", data=png.tobytes()), 10**6, 10**6)
    np.testing.assert_array_equal(out, RGB)
    truncated = png.tobytes()[:60]  # a valid header, then the data ends
    for data in (b"", b"\x89PNG garbage", b"\xff\xd8 not a jpeg", b"GIF89a", truncated):
        with pytest.raises(AskError) as err:
            images.compressed_to_rgb(SimpleNamespace(format="png", data=data), 10**6, 10**6)
        assert err.value.code == ErrorCode.BAD_IMAGE


def _pillow_jpeg(width: int, height: int, **save_args) -> bytes:
    import io

    from PIL import Image as PilImage

    out = io.BytesIO()
    PilImage.new("RGB", (width, height), (10, 20, 30)).save(out, "JPEG", **save_args)
    return out.getvalue()


def test_compressed_size_comes_from_the_png_or_jpeg_header():
    from PIL import Image as PilImage

    exif = PilImage.Exif()
    exif[0x010E] = "x" * 5000  # ImageDescription: a large APP1 segment before the frame header
    cases = {
        "png": cv2.imencode(".png", np.zeros((33, 65, 3), np.uint8))[1].tobytes(),
        "baseline jpeg": cv2.imencode(".jpg", np.zeros((33, 65, 3), np.uint8))[1].tobytes(),
        "progressive jpeg": cv2.imencode(".jpg", np.zeros((33, 65, 3), np.uint8),
                                         [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "jpeg with exif": _pillow_jpeg(65, 33, exif=exif.tobytes()),
        "greyscale png": zero_png(65, 33),
    }
    for name, data in cases.items():
        assert images.compressed_size(data) == (65, 33), name
        assert images.compressed_size(array.array("B", data)) == (65, 33), name  # as rclpy holds it


def test_a_decompression_bomb_is_rejected_from_its_header_before_decoding():
    bomb = SimpleNamespace(format="png", data=zero_png(20000, 20000))  # ~380 KiB -> 1.2 GB of RGB
    assert len(bomb.data) < 500 * 1024
    rss_before = _rss_bytes()
    start = time.perf_counter()
    with pytest.raises(AskError) as err:
        images.compressed_to_rgb(bomb, 64 * 2**20, 4096 * 4096)
    elapsed = time.perf_counter() - start
    assert err.value.code == ErrorCode.BAD_IMAGE and "20000x20000" in str(err.value)
    assert elapsed < 0.1 and _rss_bytes() - rss_before < 50 * 2**20
    # Raw images are held to the same pixel bound (before any conversion).
    raw = SimpleNamespace(width=5000, height=4000, encoding="rgb8", step=15000, data=b"")
    with pytest.raises(AskError) as err:
        images.check_size(raw, False, 4096 * 4096)
    assert err.value.code == ErrorCode.BAD_IMAGE
    images.check_size(SimpleNamespace(width=4096, height=4096), False, 4096 * 4096)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fill_image_round_trips():
    msg = images.fill_image(SimpleNamespace(), RGB)
    np.testing.assert_array_equal(images.image_to_rgb(msg, 10**6), RGB)


def test_box_depth_is_robust_and_scales_to_the_depth_resolution():
    depth = np.full((100, 200), 4.0, np.float32)
    depth[50:100, 50:100] = 2.0
    depth[60:70, 60:90] = np.nan
    # Box given in pixels of a 400x200 colour image; the depth image is half the resolution.
    assert box_depth(depth, (100, 100, 200, 200), (400, 200)) == pytest.approx(2.0)
    assert box_depth(np.full((10, 10), np.nan, np.float32), (0, 0, 10, 10), (10, 10)) is None
    k = scaled_k([100, 0, 49.5, 0, 100, 49.5, 0, 0, 1], (100, 100), (200, 200))
    assert k[0] == 200 and k[2] == 99.0
    assert box_position(None, k, (0, 0, 1, 1), (200, 200)) is None
    x, y, z = box_position(np.full((200, 200), 2.0, np.float32), k, (99, 99, 101, 101), (200, 200))
    assert (x, y, z) == pytest.approx((0.5 * 2 / 200, 0.5 * 2 / 200, 2.0))


def test_invalid_intrinsics_or_depths_give_no_point_never_nan_or_absurd():
    depth = np.full((100, 100), 2.0, np.float32)
    good = [100.0, 0.0, 49.5, 0.0, 100.0, 49.5, 0.0, 0.0, 1.0]
    box, size = (40, 40, 60, 60), (100, 100)
    assert box_position(depth, good, box, size, (0.1, 20.0)) is not None
    nan, inf = float("nan"), float("inf")
    for index, value in ((0, nan), (0, 0.0), (0, -100.0), (4, inf), (4, nan), (2, nan), (5, inf), (5, -inf)):
        k = list(good)
        k[index] = value
        assert box_position(depth, k, box, size, (0.1, 20.0)) is None, (index, value)
    assert box_position(depth, good[:8], box, size) is None  # a K that is not 3x3
    absurd = np.full((100, 100), 3e38, np.float32)
    assert box_position(absurd, good, box, size, (0.1, 20.0)) is None
    too_near = np.full((100, 100), 0.01, np.float32)
    assert box_position(too_near, good, box, size, (0.1, 20.0)) is None
    # Out-of-range readings are no readings: the box's valid ones still give its depth.
    mixed = np.full((100, 100), 1.5, np.float32)
    mixed[45:55, 45:55] = 3e38
    assert box_position(mixed, good, box, size, (0.1, 20.0))[2] == pytest.approx(1.5)
    # Finite inputs whose result overflows are rejected too.
    huge_cx = list(good)
    huge_cx[2] = -1e308
    assert box_position(depth, huge_cx, box, size, (0.1, 20.0)) is None


@pytest.mark.parametrize("question", ["", "   ", "\u200b\u200b", "\u200d\ufeff\u2060", "\u200e\t\n", "\u0301"])
def test_questions_without_visible_characters_are_invalid(question):
    with pytest.raises(AskError) as err:
        check_question(question, NodeParams())
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        check_standing_query(StandingQuerySpec("", 1.0, question), NodeParams())


@pytest.mark.parametrize("question", ["?", "where is the cup?", "\u200bcup", "杯子在哪里", "é"])
def test_questions_with_visible_characters_are_accepted(question):
    check_question(question, NodeParams())


def test_depth_range_is_a_pair_of_increasing_metres():
    assert from_mapping(NodeParams, {"depth_range_m": [0, 10]}).depth_range_m == [0.0, 10.0]
    assert from_mapping(NodeParams, {"depth_range_m": array.array("d", [0.2, 8.0])}).depth_range_m == [0.2, 8.0]
    for bad in ([1.0], [5.0, 1.0], [1.0, 1.0], [-1.0, 2.0], ["a", "b"], [0.1, float("nan")], 3.0):
        with pytest.raises(ValueError):
            from_mapping(NodeParams, {"depth_range_m": bad})


def test_receive_counter_counts_sequence_gaps_per_publisher():
    counter = ReceiveCounter()
    for origin in (("a", 5), ("a", 6), ("a", 9), ("b", 1), ("b", 3), None, ("a", 10)):
        counter.count(origin)
    # a: 7 and 8 never taken; b: 2. The first message of a publisher is no gap (late joiners).
    assert counter.received == 7 and counter.skipped == 3
    now = time.monotonic()
    assert counter.rate_hz(now) == pytest.approx(7 / RATE_WINDOW_S)
    assert counter.rate_hz(now + RATE_WINDOW_S) == 0.0


def test_worker_rejects_when_full_and_answers_everything_it_accepted():
    release = threading.Event()
    worker = RequestWorker(queue_size=1, log_error=lambda msg: None)
    running = worker.submit(lambda job: release.wait(5) and "first", 10.0)
    time.sleep(0.05)
    queued = worker.submit(lambda job: "second", 10.0)
    with pytest.raises(AskError) as err:
        worker.submit(lambda job: "third", 10.0)
    assert err.value.code == ErrorCode.BUSY and worker.stats.rejected == 1
    with pytest.raises(AskError):
        worker.submit(lambda job: "background", 10.0, only_if_idle=True)
    assert worker.stats.rejected == 1  # skipped background work is not counted as a rejection
    release.set()
    assert worker.wait(running) == "first" and worker.wait(queued) == "second"
    worker.stop()


def test_worker_maps_cancel_timeout_and_failures_to_codes():
    logged = []
    worker = RequestWorker(queue_size=4, log_error=logged.append)

    def generate(job):
        while not job.cancel.wait(0.01):
            pass
        raise RequestCancelled()

    timed_out = worker.submit(generate, 0.1)
    with pytest.raises(AskError) as err:
        worker.wait(timed_out)
    assert err.value.code == ErrorCode.TIMEOUT
    cancelled = worker.submit(generate, 10.0)
    with pytest.raises(AskError) as err:
        worker.wait(cancelled, poll=lambda: cancelled.cancel_with(ErrorCode.CANCELED))
    assert err.value.code == ErrorCode.CANCELED

    def fail(job):
        raise ZeroDivisionError("boom")

    for _ in range(3):
        with pytest.raises(AskError) as err:
            worker.wait(worker.submit(fail, 10.0))
        assert err.value.code == ErrorCode.INTERNAL
    assert len(logged) == 1 and "ZeroDivisionError" in logged[0]  # traceback logged once
    assert worker.stats.internal_errors == 3
    worker.stop()


def test_stop_answers_queued_jobs_not_ready():
    worker = RequestWorker(queue_size=4, log_error=lambda msg: None)
    block = threading.Event()
    worker.submit(lambda job: block.wait(5), 10.0)
    time.sleep(0.05)
    queued = worker.submit(lambda job: "never", 10.0)
    threading.Timer(0.1, block.set).start()
    worker.stop()
    with pytest.raises(AskError) as err:
        queued.future.result(1)
    assert err.value.code == ErrorCode.NOT_READY


def test_standing_schedule_needs_a_new_frame_and_a_full_period():
    schedule = StandingSchedule()
    query = StandingQuerySpec("cam", 1.0, "q")
    schedule.set([query])
    seq = {"cam": 1}
    assert schedule.due(0.0, seq.get) == [(query, 1)]
    schedule.started(query, 1, 0.0)
    assert schedule.due(5.0, seq.get) == []  # no newer frame
    seq["cam"] = 2
    assert schedule.due(0.5, seq.get) == []  # too soon
    assert schedule.due(1.0, seq.get) == [(query, 2)]


def test_lru_cache_keeps_the_most_recent():
    cache = LruCache(2)
    for key in "abc":
        cache.put(key, key.upper())
    cache.put(None, "ignored")
    assert cache.get("a") is None and cache.get("b") == "B" and cache.get(None) is None


def test_parameters_validate_types_ranges_choices_and_standing_queries():
    names = {s.name for s in specs(NodeParams)}
    assert {"generation.num_beams", "cameras", "qos_reliability", "standing_queries"} <= names
    assert all(s.description for s in specs(NodeParams))
    params = from_mapping(NodeParams, {"cameras": ["front", "rear"], "request_timeout_s": 5,
                                       "standing_queries": ["rear|2.5|what is on the table?"]})
    assert params.request_timeout_s == 5.0
    assert params.standing_query_specs() == [StandingQuerySpec("rear", 2.5, "what is on the table?")]
    for bad in ({"queue_size": 0}, {"backend": "tflite"}, {"cameras": []}, {"nope": 1},
                {"standing_queries": ["front|x|q"]}, {"standing_queries": ["side|1|q"]},
                {"standing_queries": ["|0|q"]}, {"max_question_chars": True}):
        with pytest.raises(ValueError):
            from_mapping(NodeParams, bad)


def test_error_codes_match_the_message_definition():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "msg" / "ErrorCode.msg").read_text()
    defined = {line.split()[1]: int(line.split("=")[1]) for line in text.splitlines() if line.startswith("uint8 ")}
    assert defined == {code.name: code.value for code in ErrorCode}


def test_make_runtime_says_what_is_missing(tmp_path, monkeypatch):
    from lion_ros.serving import runtime_factory
    from lion_ros.serving.runtime_factory import RuntimeUnavailable, make_runtime

    monkeypatch.setitem(runtime_factory.BACKEND_CLASSES, "tensorrt", ("lion_ros.runtime.not_built", "X"))
    with pytest.raises(RuntimeUnavailable, match="does not exist"):
        make_runtime(NodeParams(model_path=str(tmp_path / "absent")))
    with pytest.raises(RuntimeUnavailable, match="unknown backend"):
        make_runtime(NodeParams(model_path=str(tmp_path), backend="tflite"))
    with pytest.raises(RuntimeUnavailable, match="not available"):
        make_runtime(NodeParams(model_path=str(tmp_path), backend="tensorrt"))


def test_repetition_penalty_zero_takes_the_models_own(tmp_path):
    import json

    from lion_ros.api import GENERATION_CONFIG_NAME
    from lion_ros.serving.parameters import SHIPPED_MODEL

    def resolved(model_dir, penalty=0.0):
        return NodeParams(model_path=str(model_dir), generation_repetition_penalty=penalty) \
            .with_model_defaults().generation_repetition_penalty

    assert resolved(tmp_path) == 1.5  # no generation_config.json: the reference value
    assert resolved(SHIPPED_MODEL) == 1.0  # lion-nano's box digits repeat
    (tmp_path / GENERATION_CONFIG_NAME).write_text(json.dumps({"repetition_penalty": 1.2}))
    assert resolved(tmp_path) == 1.2
    assert resolved(tmp_path, penalty=1.3) == 1.3  # an explicit parameter wins
    for bad, message in ((json.dumps({"repetition_penalty": -1}), "must be a positive number"),
                         (json.dumps({"temperature": 0.7}), "expected an object with keys among"),
                         (json.dumps([1.0]), "expected an object"),
                         ("{not json", "not a readable JSON file")):
        (tmp_path / GENERATION_CONFIG_NAME).write_text(bad)
        with pytest.raises(ValueError, match=message):
            resolved(tmp_path)


def test_make_runtime_dispatches_by_backend_name(tmp_path, monkeypatch):
    import sys
    import types

    from lion_ros.serving import runtime_factory

    calls = []
    module = types.ModuleType("fake_backend")

    class FakeRuntime:
        @classmethod
        def from_pretrained(cls, model_dir, device="cpu", dtype=None):
            calls.append((model_dir, device, dtype))
            return cls()

    module.FakeRuntime = FakeRuntime
    monkeypatch.setitem(sys.modules, "fake_backend", module)
    monkeypatch.setitem(runtime_factory.BACKEND_CLASSES, "pytorch", ("fake_backend", "FakeRuntime"))
    runtime = runtime_factory.make_runtime(NodeParams(model_path=str(tmp_path), device="cuda", precision="mixed"))
    assert isinstance(runtime, FakeRuntime) and calls == [(str(tmp_path), "cuda", "mixed")]


def test_make_runtime_reports_missing_tensorrt_cleanly(tmp_path):
    """The real TensorRT backend on a machine without tensorrt: a clear RuntimeUnavailable."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks the message where it is absent")
    from tiny_lion import save_model_dir, tiny_model, tiny_tokenizers

    from lion_ros.serving.runtime_factory import RuntimeUnavailable, make_runtime

    tokenizers = tiny_tokenizers()
    model_dir = save_model_dir(tmp_path / "m", tiny_model(tokenizers), tokenizers)
    with pytest.raises(RuntimeUnavailable, match="(?i)tensorrt"):
        make_runtime(NodeParams(model_path=str(model_dir), backend="tensorrt", device="cuda"))
