"""lion_node: a managed node answering questions about camera frames with LION.

Lifecycle: configure loads the runtime and subscribes the cameras, activate warms the model up
and starts the request worker, deactivate stops the worker (queued requests get NOT_READY) and
drops cached image features, cleanup releases the runtime. `autostart` runs configure +
activate at construction. The ask service/action exist in every state and answer NOT_READY
unless the node is active and enabled.

Threads: executor callbacks only validate, queue and wait (service/action callbacks are in a
reentrant group, so run the node in a MultiThreadedExecutor with `executor_threads()`
threads); the worker thread converts, encodes, generates and publishes. Camera callbacks only
store the latest message.

Every request gets exactly one reply: the middleware keeps up to `ask_service_depth` /
`ask_action_depth` requests of a burst until the executor takes them, and each one taken is
answered at once (BUSY, NOT_READY, a bad argument) or queued and answered later. Shutting down
(SIGINT, SIGTERM, the lifecycle shutdown transition) first stops accepting and answers what
was accepted, while the context is still valid (`drain`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, ShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_services_default
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import MarkerArray

from lion_ros.action import Ask as AskAction
from lion_ros.msg import SceneAnswer
from lion_ros.ros import messages
from lion_ros.ros.declare import declare, read
from lion_ros.ros.diagnostics import diagnostics
from lion_ros.ros.markers import markers
from lion_ros.runtime.base import GenerationSettings, LionRuntime
from lion_ros.serving.annotate import annotate
from lion_ros.serving.errors import AskError, ErrorCode
from lion_ros.serving.frames import FrameStore, Origin
from lion_ros.serving.images import fill_image
from lion_ros.serving.latency import LatencyWindow
from lion_ros.serving.parameters import NodeParams, StandingQuerySpec, check_standing_query
from lion_ros.serving.requests import TASKS, Outcome, Request, RequestHandler
from lion_ros.serving.runtime_factory import RuntimeUnavailable, make_runtime
from lion_ros.serving.standing import StandingSchedule
from lion_ros.serving.worker import Job, RequestWorker
from lion_ros.srv import Ask, SetStandingQueries

RuntimeFactory = Callable[[NodeParams], LionRuntime]
_STANDING_TICK_S = 0.05
_WARMUP_IMAGE = (480, 640)  # rows, cols; any size works, this one exercises a typical resize
# After the drain (every ask callback returned): time for the executor to send the replies, for
# action clients to fetch the results of goals that just ended, and for the middleware to
# deliver them.
_SHUTDOWN_LINGER_S = 0.3
# rclpy passes message info (the publisher's sequence number) to two-argument subscription
# callbacks from Iron on; Humble's rclpy does not, and skipped frames are then not counted.
_MESSAGE_INFO = hasattr(Subscription, "CallbackType")


class LionNode(LifecycleNode):
    def __init__(self, node_name: str = "lion_node", *, runtime_factory: RuntimeFactory = make_runtime,
                 **kwargs: Any):
        """`runtime_factory` builds the runtime on configure (tests inject a scripted one)."""
        super().__init__(node_name, **kwargs)
        declare(self, NodeParams)
        self._runtime_factory = runtime_factory
        self._state = "unconfigured"
        self._enabled = True
        self._params: NodeParams | None = None
        self._runtime: LionRuntime | None = None
        self._runtime_error = ""
        self._store: FrameStore | None = None
        self._pipeline: RequestHandler | None = None
        self._worker: RequestWorker | None = None
        self._camera_subs: list[Any] = []
        self._latency = LatencyWindow()
        self._standing = StandingSchedule()

        self._in_flight = 0  # ask callbacks between their start and their reply
        self._in_flight_lock = threading.Lock()
        self.finalized = threading.Event()  # set by the shutdown transition; main() then exits

        group = ReentrantCallbackGroup()
        self.create_service(Ask, "~/ask", self._on_ask_service, callback_group=group,
                            qos_profile=_request_qos(self.get_parameter("ask_service_depth").value))
        action_qos = _request_qos(self.get_parameter("ask_action_depth").value)
        self._action = ActionServer(self, AskAction, "~/ask", execute_callback=self._on_ask_action,
                                    cancel_callback=lambda _goal: CancelResponse.ACCEPT, callback_group=group,
                                    goal_service_qos_profile=action_qos, result_service_qos_profile=action_qos,
                                    cancel_service_qos_profile=action_qos)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(SetStandingQueries, "~/set_standing_queries", self._on_set_standing)
        self._detections_pub = self.create_publisher(Detection2DArray, "~/detections", 10)
        self._answers_pub = self.create_publisher(SceneAnswer, "~/answers", 10)
        self._annotated_pub = self.create_publisher(Image, "~/annotated", 2)
        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_timer(_STANDING_TICK_S, self._standing_tick)

        if self.get_parameter("autostart").value and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    @property
    def frames(self) -> FrameStore | None:
        """Latest frames per camera (None unless configured)."""
        return self._store

    def executor_threads(self) -> int:
        """Threads the executor needs: one per waiting request plus room for everything else."""
        return int(self.get_parameter("queue_size").value) + 4

    # Lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            params = read(self, NodeParams).with_model_defaults()
        except ValueError as exc:
            self.get_logger().error(f"invalid parameters: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            self._runtime = self._runtime_factory(params)
        except RuntimeUnavailable as exc:
            self._runtime_error = str(exc)
            self.get_logger().error(f"cannot load the model: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:
            self._runtime_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"loading the model failed:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        self._runtime_error = ""
        self._params = params
        self._store = FrameStore(params.cameras)
        self._pipeline = RequestHandler(params, self._store, self._runtime)
        self._subscribe(params)
        self._standing.set([self._resolve_standing(q) for q in params.standing_query_specs()])
        self._state = "inactive"
        self.get_logger().info(
            f"configured: backend {params.backend} on {params.device} ({getattr(self._runtime, 'name', '?')}), "
            f"cameras {params.cameras} ({params.image_transport}, QoS {params.qos_reliability}, depth 1), "
            f"queue {params.queue_size}, {len(params.standing_queries)} standing queries")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._warm_up()
        except Exception as exc:
            self._runtime_error = f"warm-up failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._runtime_error)
            return TransitionCallbackReturn.FAILURE
        self._worker = RequestWorker(self._params.queue_size, self.get_logger().error)
        self._state = "active"
        self.get_logger().info("active: answering on ~/ask")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._state = "inactive"
        self.stop_worker()
        self._pipeline.clear_cache()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.drain()
        self._release()
        self._state = "finalized"
        self.finalized.set()
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self) -> None:
        """One encode + one token, so the first real question does not pay for lazy init."""
        start = time.monotonic()
        encoded = self._runtime.encode_image(np.zeros((*_WARMUP_IMAGE, 3), np.uint8))
        self._runtime.answer(encoded, "What is in the image?", settings=GenerationSettings(
            num_beams=1, max_new_tokens=1, repetition_penalty=self._params.generation_repetition_penalty))
        self.get_logger().info(f"warm-up took {time.monotonic() - start:.2f} s")

    def stop_worker(self, reason: str = "the node was deactivated") -> None:
        """Answer queued requests NOT_READY and end the worker thread (before destroy_node)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(reason)

    def drain(self, timeout_s: float = 1.5) -> bool:
        """Stop accepting and answer everything accepted: new requests answer NOT_READY, queued
        and running ones end NOT_READY (or with their answer if it is ready first). Needs the
        executor still spinning, as it sends the replies. Returns when every ask callback has
        returned (True) or after `timeout_s` (False)."""
        self._state = "shutting down"
        self.stop_worker("the node is shutting down")
        deadline = time.monotonic() + timeout_s
        while self.requests_in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.requests_in_flight()

    def requests_in_flight(self) -> int:
        with self._in_flight_lock:
            return self._in_flight

    def _release(self) -> None:
        for sub in self._camera_subs:
            self.destroy_subscription(sub)
        self._camera_subs = []
        self._standing.set([])
        close = getattr(self._runtime, "close", None)
        if callable(close):
            close()
        self._runtime = self._pipeline = self._store = self._params = None

    # Subscriptions ------------------------------------------------------------------------

    def _subscribe(self, params: NodeParams) -> None:
        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability[params.qos_reliability])
        store = self._store
        compressed = params.image_transport == "compressed"
        subs = []
        for camera in params.cameras:
            if compressed:
                subs.append(self.create_subscription(
                    CompressedImage, f"{camera}/image/compressed",
                    _counted(lambda msg, origin, c=camera: store.put_image(c, msg, True, origin)), qos))
            else:
                subs.append(self.create_subscription(
                    Image, f"{camera}/image",
                    _counted(lambda msg, origin, c=camera: store.put_image(c, msg, False, origin)), qos))
            if params.use_depth:
                subs.append(self.create_subscription(
                    Image, f"{camera}/depth",
                    _counted(lambda msg, origin, c=camera: store.put_depth(c, msg, origin)), qos))
                subs.append(self.create_subscription(
                    CameraInfo, f"{camera}/camera_info", lambda msg, c=camera: store.put_info(c, msg), qos))
            if params.tags_topic and not params.tags_topic.startswith("/"):
                subs.append(self.create_subscription(
                    Detection2DArray, f"{camera}/{params.tags_topic}",
                    lambda msg, c=camera: store.put_tags(c, _class_ids(msg)), qos))
        if params.tags_topic.startswith("/"):
            def shared_tags(msg: Detection2DArray) -> None:
                for camera in params.cameras:
                    store.put_tags(camera, _class_ids(msg))
            subs.append(self.create_subscription(Detection2DArray, params.tags_topic, shared_tags, qos))
        for sub in subs:
            self.get_logger().info(f"subscribed {sub.topic_name} ({params.qos_reliability})")
        self._camera_subs = subs

    # Asking -------------------------------------------------------------------------------

    def _accept(self, req: Any, progress: Callable[[str, str, int], None] | None = None
                ) -> tuple[Request, Job, RequestWorker]:
        """Validate and queue a request; raises AskError for anything answered at once."""
        worker, pipeline = self._worker, self._pipeline
        if self._state != "active" or worker is None or pipeline is None:
            raise AskError(ErrorCode.NOT_READY, f"the node is {self._state}")
        if not self._enabled:
            raise AskError(ErrorCode.NOT_READY, "the node is paused (~/enable)")
        request = pipeline.prepare(req.question, req.camera, req.image, list(req.tags), req.task,
                                   req.max_new_tokens, req.timeout_s)
        request.progress = progress
        if progress:
            progress("queued", "", 0)
        return request, self._submit(worker, pipeline, request), worker

    def _submit(
        self, worker: RequestWorker, pipeline: RequestHandler, request: Request, only_if_idle: bool = False
    ) -> Job:
        job = worker.submit(lambda j: pipeline.run(request, j.cancel, j.accepted, j.queue_ms),
                            request.timeout_s, only_if_idle=only_if_idle)
        job.future.add_done_callback(lambda future: self._publish(request, future))
        return job

    def _counting_in_flight(self, delta: int) -> None:
        with self._in_flight_lock:
            self._in_flight += delta

    def _on_ask_service(self, req: Ask.Request, res: Ask.Response) -> Ask.Response:
        self._counting_in_flight(1)
        try:
            _, job, worker = self._accept(req)
            return messages.fill_result(res, worker.wait(job))
        except AskError as exc:
            return messages.fill_result(res, error=exc)
        finally:
            self._counting_in_flight(-1)

    def _on_ask_action(self, goal: Any) -> AskAction.Result:
        self._counting_in_flight(1)
        try:
            return self._answer_goal(goal)
        finally:
            self._counting_in_flight(-1)

    def _answer_goal(self, goal: Any) -> AskAction.Result:
        result = AskAction.Result()

        def progress(stage: str, text: str, tokens: int) -> None:
            goal.publish_feedback(AskAction.Feedback(partial_answer=text, tokens_generated=tokens, stage=stage))

        try:
            _, job, worker = self._accept(goal.request, progress)

            def poll() -> None:
                if goal.is_cancel_requested:
                    job.cancel_with(ErrorCode.CANCELED)

            messages.fill_result(result, worker.wait(job, poll))
            goal.succeed()
        except AskError as exc:
            messages.fill_result(result, error=exc)
            if exc.code == ErrorCode.CANCELED and goal.is_cancel_requested:
                goal.canceled()
            else:
                goal.abort()
        return result

    def _publish(self, request: Request, future: Future) -> None:
        """Runs on the worker thread for every finished request: answers, detections, images."""
        error = future.exception()
        if error is not None:
            if not isinstance(error, AskError):
                error = AskError(ErrorCode.INTERNAL, repr(error))
            self._answers_pub.publish(messages.scene_answer(None, error, request))
            return
        outcome: Outcome = future.result()
        header = request.frame.header
        boxes = outcome.answer.boxes
        self._detections_pub.publish(messages.detections(header, boxes))  # empty too: "nothing seen"
        self._answers_pub.publish(messages.scene_answer(outcome, None, request))
        if self._annotated_pub.get_subscription_count() > 0:
            image = fill_image(Image(header=header), annotate(outcome.rgb, boxes, outcome.answer.text,
                                                              outcome.positions))
            self._annotated_pub.publish(image)
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(markers(header, request.camera or "image", boxes, outcome.positions))
        t = outcome.answer.timings
        stages = {"queue_ms": outcome.queue_ms, "prefill_ms": t.prefill_ms, "decode_ms": t.decode_ms,
                  "total_ms": outcome.total_ms}
        if not outcome.image_features_reused:
            stages["image_encode_ms"] = t.image_encode_ms
        self._latency.add(**stages)

    # Services -----------------------------------------------------------------------------

    def _on_enable(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        self._enabled = bool(req.data)
        res.success, res.message = True, "enabled" if self._enabled else "paused"
        self.get_logger().info(f"~/enable: {res.message}")
        return res

    def _on_set_standing(self, req: SetStandingQueries.Request, res: SetStandingQueries.Response
                         ) -> SetStandingQueries.Response:
        if self._params is None:
            res.success, res.message = False, f"the node is {self._state}; configure it first"
            return res
        try:
            queries = []
            for q in req.queries:
                if q.task not in TASKS:
                    raise ValueError(f"standing query {q.question!r}: task {q.task} is not one of {sorted(TASKS)}")
                spec = StandingQuerySpec(q.camera, float(q.period_s), q.question, int(q.task))
                check_standing_query(spec, self._params)
                queries.append(self._resolve_standing(spec))
        except ValueError as exc:
            res.success, res.message = False, str(exc)
            return res
        self._standing.set(queries)
        res.success, res.message = True, f"{len(queries)} standing queries"
        self.get_logger().info(f"~/set_standing_queries: {res.message}")
        return res

    def _resolve_standing(self, query: StandingQuerySpec) -> StandingQuerySpec:
        return StandingQuerySpec(query.camera or self._params.cameras[0], query.period_s, query.question, query.task)

    # Timers -------------------------------------------------------------------------------

    def _standing_tick(self) -> None:
        worker, pipeline, store = self._worker, self._pipeline, self._store
        if self._state != "active" or not self._enabled or worker is None or pipeline is None:
            return
        now = time.monotonic()

        def latest_seq(camera: str) -> int | None:
            frame = store.latest(camera)
            return frame.seq if frame is not None else None

        for query, _seq in self._standing.due(now, latest_seq):
            try:
                request = pipeline.prepare(query.question, query.camera, task=query.task)
                self._submit(worker, pipeline, request, only_if_idle=True)
            except AskError:
                continue  # busy or stale: stays due and runs on a later tick
            self._standing.started(query, request.frame.seq, now)

    def _publish_diagnostics(self) -> None:
        params = self._params
        self._diagnostics_pub.publish(diagnostics(
            self.get_name(), self.get_clock().now().to_msg(), self._state, self._enabled,
            params.backend if params else self.get_parameter("backend").value, self._runtime_error,
            self._worker, self._store, self._latency, params.max_frame_age_s if params else 0.0))


def _class_ids(msg: Detection2DArray) -> list[str]:
    return [r.hypothesis.class_id for d in msg.detections for r in d.results]


def _request_qos(depth: int) -> QoSProfile:
    """The services' default QoS (reliable, volatile) with a deeper request history: the default
    keeps the last 10, and a larger burst lost its oldest requests without any reply."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=qos_profile_services_default.reliability,
                      durability=qos_profile_services_default.durability)


def _counted(put: Callable[[Any, Origin], None]) -> Callable[..., None]:
    """A subscription callback that hands `put` the message and who sent it (publisher, sequence
    number), so skipped frames can be counted; the message only where rclpy has no message info."""
    if not _MESSAGE_INFO:
        return lambda msg: put(msg, None)

    def callback(msg: Any, info: dict) -> None:
        gid, seq = info.get("publisher_gid"), info.get("publication_sequence_number")
        if seq is None:
            put(msg, None)
        else:
            # Jazzy's rclpy gives the sequence number but no publisher gid: the topic's
            # publishers are then counted as one (exact for the usual one camera driver).
            put(msg, (b"" if gid is None else bytes(gid["data"]), seq))
    return callback


def main(args: list[str] | None = None) -> None:
    """Run lion_node until SIGINT, SIGTERM or the lifecycle shutdown transition, drain, and end
    the process (exit status 0 after a clean shutdown).

    rclpy's own signal handler would shut the context down at once, before the node could answer
    what it accepted (replies and goal results then fail with "context is invalid"); ours only
    asks the main thread to drain first. The executor spins on its own thread meanwhile: it
    sends the replies and goal results of the drain.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()  # the main thread only reads it (is_set takes no lock)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node = LionNode()
    executor = MultiThreadedExecutor(num_threads=node.executor_threads())
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, node), name="lion-executor", daemon=True)
    spinner.start()
    try:
        while not stop.is_set() and not node.finalized.is_set() and spinner.is_alive():
            time.sleep(0.05)
        if not spinner.is_alive():  # its traceback is already printed
            raise SystemExit("lion_node: the executor stopped")
        if not node.finalized.is_set():
            node.trigger_shutdown()  # the lifecycle transition: drain, release the model
        time.sleep(_SHUTDOWN_LINGER_S)
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    # Everything is answered and closed. What is left is the interpreter tearing down torch and
    # its kin object by object: 6 s on 2 shared cores, for memory the OS frees at once anyway.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spin(executor: MultiThreadedExecutor, node: LionNode) -> None:
    """executor.spin(), except that an exception escaping a callback is logged and spinning goes
    on: one bad request must not stop the node. (Jazzy's rclpy raises in its own lifecycle
    service when asked for a transition the current state does not have.)"""
    while executor.context.ok():
        try:
            executor.spin()  # returns once the executor or the context is shut down
            return
        except (ExternalShutdownException, ShutdownException):
            return
        except Exception:
            node.get_logger().error(f"a callback raised; the node keeps serving:\n{traceback.format_exc()}")


if __name__ == "__main__":
    main()
