"""Shared by the node tests: a scripted runtime and a harness running lion_node over real DDS.

ScriptedRuntime stands in for the model backend (PyTorch/ONNX/TensorRT). The node tests check
the node's behaviour (queueing, errors, headers, publishing, lifecycle), for which the model is
a collaborator: the scripted runtime implements the LionRuntime protocol with deterministic
answers, boxes at known fractions of the image (so their pixel coordinates are known for any
resolution), a controllable per-token delay and a token stream that honours the cancel event.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import SetBool

from lion_ros.action import Ask as AskAction
from lion_ros.api import Answer, GroundedBox, StageTimings, TaskKind
from lion_ros.ros.node import LionNode
from lion_ros.runtime.base import EncodedImage, RequestCancelled
from lion_ros.srv import Ask, SetStandingQueries

# The red cup occupies x in [0.25, 0.5) and y in [0.5, 1.0) of any image it is asked about.
CUP_BOX = (0.25, 0.5, 0.5, 1.0)


class ScriptedRuntime:
    """Deterministic LionRuntime: "where ..." questions ground "the red cup" at CUP_BOX."""

    name = "scripted"

    def __init__(self, token_delay_s: float = 0.0):
        self.token_delay_s = token_delay_s
        self.encodes = 0
        self.questions: list[tuple[str, tuple[str, ...]]] = []
        self.fail_on: str | None = None  # a question that raises inside the "model"
        self._lock = threading.Lock()

    def encode_image(self, rgb: np.ndarray) -> EncodedImage:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        with self._lock:
            self.encodes += 1
        return EncodedImage(features=rgb.mean(axis=(0, 1)), width=rgb.shape[1], height=rgb.shape[0], encode_ms=2.0)

    def answer(self, image: EncodedImage, question: str, *, tags=(), task=None, settings=None,
               on_partial=None, cancel=None) -> Answer:
        with self._lock:
            self.questions.append((question, tuple(tags)))
        if question == self.fail_on:
            raise RuntimeError("scripted model failure")
        grounding = question.lower().startswith("where")
        text = "the red cup [0.250,0.500,0.500,1.000]" if grounding else "a table with a red cup on it"
        tokens = text.split(" ")
        limit = settings.max_new_tokens if settings else len(tokens)
        out = ""
        for i, token in enumerate(tokens[:limit]):
            if cancel is not None and cancel.is_set():
                raise RequestCancelled()
            time.sleep(self.token_delay_s)
            out = f"{out} {token}".strip()
            if on_partial:
                on_partial(out, i + 1)
        boxes = []
        if grounding:
            x1, y1, x2, y2 = CUP_BOX
            boxes.append(GroundedBox("the red cup", x1 * image.width, y1 * image.height,
                                     x2 * image.width, y2 * image.height, score=0.9))
        return Answer(out, TaskKind.REGION if grounding else TaskKind.IMAGE, boxes,
                      StageTimings(image_encode_ms=2.0, prefill_ms=1.0, decode_ms=3.0, total_ms=6.0,
                                   tokens_generated=min(limit, len(tokens))))


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def result_of(future, timeout_s: float = 15.0):
    wait_for(future.done, timeout_s, "a DDS reply")
    return future.result()


def rgb_image(width: int, height: int, stamp_sec: int, frame_id: str = "front_optical") -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.frame_id = stamp_sec, frame_id
    msg.height, msg.width, msg.encoding, msg.step = height, width, "rgb8", width * 3
    msg.data = np.full((height, width, 3), 90, np.uint8).tobytes()
    return msg


class Harness:
    """lion_node in its own context on a MultiThreadedExecutor thread; a client node in another."""

    def __init__(self, runtime: Any = None, *, runtime_factory: Callable[[Any], Any] | None = None,
                 **params: Any):
        """`runtime` is served as is; `runtime_factory` (e.g. the node's real make_runtime) builds
        one from the parameters at each configure instead."""
        self.runtime = runtime if runtime is not None else ScriptedRuntime()
        params.setdefault("qos_reliability", "reliable")
        params.setdefault("max_frame_age_s", 0.0)
        self._contexts = []
        self._executors = []
        node_context = self._context()
        self.node = LionNode(runtime_factory=runtime_factory or (lambda p: self.runtime), context=node_context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self._spin(MultiThreadedExecutor(num_threads=self.node.executor_threads(), context=node_context), self.node)
        self._make_client()
        self._stamp = 100

    def _make_client(self) -> None:
        """The client node and its clients, in a context (a DDS participant) of their own."""
        context = self._context()
        self.client = rclpy.create_node("lion_test_client", context=context)
        # Clients first: an ActionClient built while its node spins can be polled half-made.
        self.ask_client = self.client.create_client(Ask, "/lion_node/ask")
        self.action_client = ActionClient(self.client, AskAction, "/lion_node/ask")
        self.change_state_client = self.client.create_client(ChangeState, "/lion_node/change_state")
        self.get_state_client = self.client.create_client(GetState, "/lion_node/get_state")
        self.enable_client = self.client.create_client(SetBool, "/lion_node/enable")
        self.standing_client = self.client.create_client(SetStandingQueries, "/lion_node/set_standing_queries")
        self._spin(SingleThreadedExecutor(context=context), self.client)
        self._publishers: dict[tuple[str, str], Any] = {}

    def wait_for_services(self, *clients: str, timeout_s: float = 15.0) -> None:
        """Wait until the named client attributes (e.g. "enable_client", "action_client") see
        their services (an action client: its action server).

        Fast DDS sometimes never matches a new participant's service requesters (known:
        ros2/rmw_fastrtps#392 and #677, where it is decided when the node is made and new clients
        on the same node do not help). Here a 30-s wait failed in about 3 of 100 runs, so a
        client participant that sees nothing in `timeout_s` is replaced once by a new one."""
        for attempt in range(2):
            missing = [name for name in clients if not self._discovered(getattr(self, name), timeout_s)]
            if not missing:
                return
            if attempt == 0:
                self._replace_client()
        raise AssertionError(f"services of {missing} not discovered, also by a new client participant")

    @staticmethod
    def _discovered(client: Any, timeout_s: float) -> bool:
        if isinstance(client, ActionClient):
            return client.wait_for_server(timeout_sec=timeout_s)
        return client.wait_for_service(timeout_sec=timeout_s)

    def _replace_client(self) -> None:
        executor, context = self._executors.pop(), self._contexts.pop()  # the client's, made last
        executor.shutdown(timeout_sec=2.0)
        self.client.destroy_node()
        rclpy.shutdown(context=context)
        self._make_client()

    def _context(self):
        context = rclpy.context.Context()
        rclpy.init(context=context)
        self._contexts.append(context)
        return context

    def _spin(self, executor, node) -> None:
        executor.add_node(node)
        self._executors.append(executor)
        threading.Thread(target=executor.spin, daemon=True).start()

    def publisher(self, msg_type, topic: str):
        key = (msg_type.__name__, topic)
        if key not in self._publishers:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self._publishers[key] = self.client.create_publisher(msg_type, topic, qos)
        return self._publishers[key]

    def collect(self, msg_type, topic: str) -> list:
        received: list = []
        self.client.create_subscription(msg_type, topic, received.append, 10)
        wait_for(lambda: self.node.count_subscribers(topic) > 0, what=f"the node to see our {topic} subscriber")
        return received

    def collect_from(self, msg_type, topic: str, publisher_node) -> list:
        """Subscribe to a topic that another node (not lion_node) publishes."""
        received: list = []
        self.client.create_subscription(msg_type, topic, received.append, 10)
        wait_for(lambda: publisher_node.count_subscribers(topic) > 1, what=f"{topic} to match")
        return received

    def send_frame(self, camera: str = "camera", msg: Any = None, topic: str | None = None) -> Any:
        """Publish until the node holds this frame; returns the message."""
        if msg is None:
            self._stamp += 1
            msg = rgb_image(640, 360, self._stamp)
        def arrived() -> bool:
            frame = self.node.frames.latest(camera)
            return frame is not None and frame.msg.header == msg.header

        self.deliver(topic or f"/{camera}/image", msg, arrived)
        return msg

    def send_depth(self, camera: str, depth_msg: Image, info: CameraInfo) -> None:
        self.deliver(f"/{camera}/depth", depth_msg, lambda: self.node.frames.depth_and_info(camera)[0] is not None)
        self.deliver(f"/{camera}/camera_info", info, lambda: self.node.frames.depth_and_info(camera)[1] is not None)

    def deliver(self, topic: str, msg: Any, arrived: Callable[[], bool]) -> None:
        """Publish `msg` until `arrived()` says the node has it."""
        pub = self.publisher(type(msg), topic)
        wait_for(lambda: pub.get_subscription_count() > 0, what=f"lion_node to subscribe {topic}")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            pub.publish(msg)
            try:
                wait_for(arrived, 0.3)
                return
            except AssertionError:
                continue
        raise AssertionError(f"{type(msg).__name__} never arrived on {topic}")

    def ask(self, question: str, camera: str = "", **fields: Any) -> Ask.Response:
        assert self.ask_client.wait_for_service(timeout_sec=10.0), "~/ask service not discovered"
        request = Ask.Request(question=question, camera=camera, **fields)
        return result_of(self.ask_client.call_async(request), 20.0)

    def close(self) -> None:
        self.node.drain()  # answers what the node accepted while the executors still spin
        for executor in self._executors:
            executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.client.destroy_node()
        for context in self._contexts:
            rclpy.shutdown(context=context)
