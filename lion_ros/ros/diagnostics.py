"""The node's state as diagnostic_msgs/DiagnosticArray (one status per concern)."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from lion_ros.serving.frames import FrameStore
from lion_ros.serving.latency import LatencyWindow
from lion_ros.serving.worker import RequestWorker

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _status(name: str, level: bytes, message: str, **values: object) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id="lion_ros",
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def diagnostics(node_name: str, stamp, lifecycle_state: str, enabled: bool, backend: str,
                runtime_error: str, worker: RequestWorker | None, store: FrameStore | None,
                latency: LatencyWindow, max_frame_age_s: float) -> DiagnosticArray:
    statuses = []
    if runtime_error:
        level, message = ERROR, runtime_error
    elif lifecycle_state != "active" or not enabled:
        level, message = WARN, f"{lifecycle_state}{'' if enabled else ', paused via ~/enable'}"
    else:
        level, message = OK, "ready"
    statuses.append(_status(f"{node_name}: runtime", level, message, lifecycle_state=lifecycle_state,
                            enabled=enabled, backend=backend))
    if worker is not None:
        s = worker.stats
        statuses.append(_status(
            f"{node_name}: requests", OK if not s.internal_errors else WARN,
            f"{worker.depth()} in queue" if not s.last_error else f"last internal error: {s.last_error}",
            queue_depth=worker.depth(), accepted=s.accepted, rejected_busy=s.rejected,
            dropped=s.dropped, timeouts=s.timeouts, internal_errors=s.internal_errors))
    stages = latency.percentiles()
    statuses.append(_status(f"{node_name}: latency", OK, "p50/p95 in ms over the last answers",
                            **{f"{stage}_p{q}": f"{v:.1f}" for stage, (p50, p95) in sorted(stages.items())
                               for q, v in (("50", p50), ("95", p95))}))
    for camera in (store.cameras if store else []):
        frame = store.latest(camera)
        if frame is None:
            statuses.append(_status(f"{node_name}: camera {camera}", WARN, "no frame yet", frames=0))
            continue
        age = frame.age_s()
        stale = max_frame_age_s > 0 and age > max_frame_age_s
        images, depths = store.receive_stats(camera)
        message = "stale" if stale else f"receiving {images.rate_hz:.1f} Hz, {images.skipped} frames skipped"
        # skipped: frames the publisher sent that the node never took (sequence-number gaps).
        statuses.append(_status(f"{node_name}: camera {camera}", WARN if stale else OK, message,
                                frame_age_s=f"{age:.2f}", frames=images.received,
                                frames_skipped=images.skipped, receive_rate_hz=f"{images.rate_hz:.1f}",
                                depth_frames=depths.received, depth_frames_skipped=depths.skipped,
                                depth_rate_hz=f"{depths.rate_hz:.1f}", frame_id=frame.header.frame_id))
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)
