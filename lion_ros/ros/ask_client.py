"""lion-ask-ros: ask lion_node a question through its ~/ask action and stream the answer.

Exit codes: 0 answered; 1 the node answered with an error (its ErrorCode name is printed);
2 bad command line; 3 the node's action server was not found or gave no result in time;
130 interrupted (the goal is cancelled first).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

EXIT_OK, EXIT_ANSWER_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
TASK_CHOICES = {"auto": 0, "image": 1, "region": 2}
_RESEND_S = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lion-ask-ros", description="Ask lion_node a question about what a camera sees.",
        epilog="Example: lion-ask-ros \"where is the red cup?\" --camera front")
    parser.add_argument("question")
    parser.add_argument("--camera", default="", help="camera name (default: the node's first camera)")
    parser.add_argument("--node", default="/lion_node", help="node name with namespace (default: /lion_node)")
    parser.add_argument("--task", choices=sorted(TASK_CHOICES), default="auto",
                        help="image = holistic (captions, VQA), region = grounding; auto infers it")
    parser.add_argument("--tags", nargs="*", default=[], help="tags for the soft prompt")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0 = the node's default")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    parser.add_argument("--quiet", action="store_true", help="print only the final answer, no streaming")
    return parser.parse_args(argv)


def format_result(result: Any, error_names: dict[int, str]) -> list[str]:
    """Human-readable lines for an Ask result: answer, boxes, 3D points, timings."""
    if not result.success:
        return [f"error {error_names.get(result.error_code, result.error_code)}: {result.message}"]
    header = result.detections.header
    lines = [f"answer: {result.answer}",
             f"frame: {header.frame_id or '(no frame_id)'} @ {header.stamp.sec}.{header.stamp.nanosec:09d}"]
    for i, det in enumerate(result.detections.detections):
        hyp = det.results[0].hypothesis if det.results else None
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        line = (f"  box {i}: {hyp.class_id if hyp else '?'!r} score {hyp.score if hyp else 0:.2f} "
                f"x1 {cx - w / 2:.1f} y1 {cy - h / 2:.1f} x2 {cx + w / 2:.1f} y2 {cy + h / 2:.1f} px")
        if i < len(result.positions) and result.positions[i].valid:
            p = result.positions[i].point
            line += f"  at ({p.x:.3f}, {p.y:.3f}, {p.z:.3f}) m"
        lines.append(line)
    t = result.timings
    lines.append(f"latency: {t.total_ms:.0f} ms total (encode {t.image_encode_ms:.0f}"
                 f"{' reused' if t.image_features_reused else ''}, prefill {t.prefill_ms:.0f}, "
                 f"decode {t.decode_ms:.0f} ms, {t.tokens_generated} tokens)")
    return lines


class StreamPrinter:
    """Prints the growing partial answer as it arrives (only the new characters)."""

    def __init__(self, out: TextIO):
        self._out = out
        self._printed = ""

    def __call__(self, feedback: Any) -> None:
        text = feedback.partial_answer
        if feedback.stage != "decoding" or not text.startswith(self._printed):
            return
        self._out.write(text[len(self._printed):])
        self._out.flush()
        self._printed = text

    def finish(self) -> None:
        self._out.write("\n")


class Unreachable(Exception):
    """The action server did not answer in time; the message says at which step."""


def ask(client: Any, executor: Any, goal: Any, timeout_s: float, on_feedback: Callable[[Any], None]) -> Any:
    """Send `goal` through the ActionClient `client`, spin `executor` until the result arrives and
    return it. Raises Unreachable when the server is missing, never acknowledges the goal, or
    gives no result within `timeout_s`; KeyboardInterrupt cancels the goal first."""
    deadline = time.monotonic() + timeout_s

    def spin_until(future: Any, until: float) -> bool:
        while not future.done() and time.monotonic() < until:
            executor.spin_once(timeout_sec=0.05)
        return future.done()

    def next_try() -> float:
        return min(deadline, time.monotonic() + _RESEND_S)

    # Discovery shares the whole budget: on a loaded machine it alone can take over 10 s.
    if not client.wait_for_server(timeout_sec=timeout_s):
        raise Unreachable("the action server was not found (is lion_node running and active?)")
    # A request sent while discovery is still settling can be lost: the server is listed before it
    # has matched our reply reader. Goal and result requests are answered promptly and idempotently
    # (a repeated result request gets the same result), so silence means send again.
    handle = None
    while handle is None and time.monotonic() < deadline:
        send = client.send_goal_async(goal, feedback_callback=lambda msg: on_feedback(msg.feedback))
        if spin_until(send, next_try()):
            handle = send.result()
    if handle is None:
        raise Unreachable("the goal was never acknowledged")
    if not handle.accepted:
        raise Unreachable("the node rejected the goal (is it active?)")
    try:
        result = handle.get_result_async()
        while not spin_until(result, next_try()):
            if time.monotonic() >= deadline:
                handle.cancel_goal_async()
                raise Unreachable("no result")
            result = handle.get_result_async()
    except KeyboardInterrupt:
        spin_until(handle.cancel_goal_async(), time.monotonic() + 2.0)
        raise
    return result.result().result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor

    from lion_ros.action import Ask as AskAction
    from lion_ros.serving.errors import ErrorCode

    if not args.question.strip():
        print("lion-ask-ros: the question is empty", file=sys.stderr)
        return EXIT_USAGE
    rclpy.init()
    node = rclpy.create_node("lion_ask_client")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    printer = StreamPrinter(sys.stdout)
    goal = AskAction.Goal(question=args.question, camera=args.camera, tags=list(args.tags),
                          task=TASK_CHOICES[args.task], max_new_tokens=args.max_new_tokens)
    action_name = f"{args.node.rstrip('/')}/ask"
    client = ActionClient(node, AskAction, action_name)
    try:
        result = ask(client, executor, goal, args.timeout, (lambda f: None) if args.quiet else printer)
    except Unreachable as e:
        print(f"lion-ask-ros: no answer from action {action_name} within {args.timeout:.0f} s: {e}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if not args.quiet:
            printer.finish()
        client.destroy()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    names = {c.value: c.name for c in ErrorCode}
    print("\n".join(format_result(result, names)), file=sys.stdout if result.success else sys.stderr)
    return EXIT_OK if result.success else EXIT_ANSWER_ERROR


if __name__ == "__main__":
    sys.exit(main())
