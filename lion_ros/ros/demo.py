"""`make demo`: the synthetic camera and lion_node on lion-nano (CPU), asked scripted questions.

Everything runs in this process over real DDS: the camera and the node on a multi-threaded
executor, and a client in its own context that asks through the ~/ask action, streams each
answer, prints boxes, 3D points and latency, and saves the ~/annotated image of every answer.
The questions are the synthetic data generator's own (grounding, spatial yes/no, counting,
caption, find-all) for the scene on screen, so each is printed with its reference answer.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_MISSING = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lion_ros.ros.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="", help="model directory (default: the shipped lion-nano)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default="demo_out", help="folder for annotated images (default: ./demo_out)")
    parser.add_argument("--scene", type=int, default=0, help="synthetic test-split scene index")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per question")
    return parser.parse_args(argv)


def scripted_questions(scene: Any) -> list[tuple[str, str, str]]:
    """(task name, question, reference answer) for the scene, one per task kind."""
    from lion_ros.data.synthetic import TaskMix, generate_samples

    mix = TaskMix(caption=1, spatial=1, count=1, attribute=0, rec=1, reg=0, grounded_caption=0, find_all=1)
    return [(s.task_name, s.question, s.answer) for s in generate_samples(scene, mix, variety_seed=None)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lion_ros.serving.parameters import SHIPPED_MODEL

    model_path = Path(args.model_path).expanduser() if args.model_path else SHIPPED_MODEL
    if not model_path.is_dir():
        print(f"make demo needs the lion-nano model, and {model_path} does not exist.\n"
              "It is produced by the training scripts (lion_ros/train); or pass --model-path DIR.",
              file=sys.stderr)
        return EXIT_MISSING

    import cv2
    import numpy as np
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from lion_ros.action import Ask as AskAction
    from lion_ros.ros.ask_client import StreamPrinter, Unreachable, ask, format_result
    from lion_ros.ros.node import LionNode
    from lion_ros.ros.synthetic_camera import SyntheticCamera
    from lion_ros.serving.errors import ErrorCode

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    server_ctx, client_ctx = rclpy.context.Context(), rclpy.context.Context()
    rclpy.init(context=server_ctx)
    rclpy.init(context=client_ctx)
    camera = SyntheticCamera(context=server_ctx, parameter_overrides=[
        Parameter("seed", value=args.scene), Parameter("rate_hz", value=5.0)])
    print(f"loading {model_path} on {args.device} ...", flush=True)
    node = LionNode(context=server_ctx, parameter_overrides=[
        Parameter("model_path", value=str(model_path)), Parameter("device", value=args.device),
        Parameter("cameras", value=["camera"]), Parameter("qos_reliability", value="reliable"),
        Parameter("request_timeout_s", value=args.timeout), Parameter("max_frame_age_s", value=0.0)])
    server = MultiThreadedExecutor(num_threads=node.executor_threads(), context=server_ctx)
    server.add_node(camera)
    server.add_node(node)
    threading.Thread(target=server.spin, daemon=True).start()

    client = rclpy.create_node("lion_demo_client", context=client_ctx)
    executor = SingleThreadedExecutor(context=client_ctx)
    executor.add_node(client)
    annotated: list[Any] = []
    client.create_subscription(Image, "/lion_node/annotated", annotated.append, 10)
    action = ActionClient(client, AskAction, "/lion_node/ask")
    names = {c.value: c.name for c in ErrorCode}

    failures = 0
    try:
        if not action.wait_for_server(timeout_sec=30.0):
            print("lion_node did not become ready (see its log above)", file=sys.stderr)
            return EXIT_FAILED
        while node.frames is None or node.frames.latest("camera") is None:
            time.sleep(0.05)
        for i, (task, question, reference) in enumerate(scripted_questions(camera.scene)):
            print(f"\n[{i + 1}] {task}: {question}\n    reference: {reference}\n    lion: ", end="", flush=True)
            printer = StreamPrinter(sys.stdout)
            try:
                result = ask(action, executor, AskAction.Goal(question=question), args.timeout + 5.0, printer)
            except Unreachable as e:
                print(f"\n    no answer: {e}", file=sys.stderr)
                failures += 1
                continue
            printer.finish()
            failures += not result.success
            print("\n".join("    " + line for line in format_result(result, names)))
            if result.success:
                stamp = result.detections.header.stamp
                shown_by = time.monotonic() + 3.0  # the annotated image follows the result
                while not any(a.header.stamp == stamp for a in annotated) and time.monotonic() < shown_by:
                    executor.spin_once(timeout_sec=0.05)
                image = next((a for a in reversed(annotated) if a.header.stamp == stamp), None)
                if image is not None:
                    rgb = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)
                    path = out_dir / f"{i + 1:02d}_{task}.png"
                    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    print(f"    saved {path}")
                annotated.clear()
    finally:
        server.shutdown()
        executor.shutdown()
        node.stop_worker()
        for n in (node, camera, client):
            n.destroy_node()
        rclpy.try_shutdown(context=server_ctx)
        rclpy.try_shutdown(context=client_ctx)
    print(f"\n{'all questions answered' if not failures else f'{failures} questions failed'}; images in {out_dir}/")
    return EXIT_OK if not failures else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
