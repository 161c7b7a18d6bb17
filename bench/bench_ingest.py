#!/usr/bin/env python3
"""Ingest cost: CPU lion_node spends per camera frame it takes, with nobody asking questions.

N cameras publish 640x480 rgb8 images, 640x480 16UC1 depth and CameraInfo at R Hz each (best
effort, depth 1, like camera drivers) from this process to a `python -m lion_ros.ros.node`
process (the shipped lion-nano on CPU, as users run it). The node's CPU time is read from
/proc before and after a measuring window, first with no camera publishing (its idle cost:
timers, diagnostics), then with all of them; the frames it took and skipped come from its
/diagnostics.

Prints per camera the frames published, taken and skipped and the rate the node reports, and
the node's CPU per taken frame (images and depth images both count as frames), with and
without its idle cost. Not a test: the figure depends on the machine and on what else runs.

    python bench/bench_ingest.py                      # 4 cameras x 30 Hz, 20 s windows
    python bench/bench_ingest.py --cameras 1 --rate-hz 10 --window-s 10
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bench_ingest.py", description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4, help="cameras (default 4)")
    parser.add_argument("--rate-hz", type=float, default=30.0, help="frames per second per camera (default 30)")
    parser.add_argument("--window-s", type=float, default=20.0, help="measuring window (default 20)")
    parser.add_argument("--model-path", default="", help="model directory (default: the shipped lion-nano)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))  # keep off other runs
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    names = [f"cam{i}" for i in range(args.cameras)]
    command = [sys.executable, "-m", "lion_ros.ros.node", "--ros-args", "-p", f"cameras:={names}"]
    if args.model_path:
        command += ["-p", f"model_path:={args.model_path}"]
    node = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    bench = rclpy.create_node("bench_ingest")
    statuses: dict[str, tuple[float, dict[str, str]]] = {}  # name -> (stamp in s, values)
    lock = threading.Lock()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with lock:
            for status in msg.status:
                statuses[status.name] = (stamp, {kv.key: kv.value for kv in status.values})

    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    pubs = [(bench.create_publisher(Image, f"{n}/image", qos), bench.create_publisher(Image, f"{n}/depth", qos),
             bench.create_publisher(CameraInfo, f"{n}/camera_info", qos)) for n in names]
    width, height = 640, 480
    image = Image(width=width, height=height, encoding="rgb8", step=width * 3,
                  data=np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8).tobytes())
    depth = Image(width=width, height=height, encoding="16UC1", step=width * 2,
                  data=np.full((height, width), 1500, np.uint16).tobytes())
    info = CameraInfo(width=width, height=height, k=[500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0])
    for msg in (image, depth, info):
        msg.header.frame_id = "bench_optical"
    executor = SingleThreadedExecutor()
    executor.add_node(bench)
    threading.Thread(target=executor.spin, daemon=True).start()

    def camera_values(name: str) -> tuple[float, dict[str, str]]:
        with lock:
            return statuses.get(f"lion_node: camera {name}", (0.0, {}))

    def wait(predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and node.poll() is None:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    published = [0] * len(names)
    publishing = threading.Event()
    stop = threading.Event()

    def publish_loop() -> None:
        period = 1.0 / args.rate_hz
        tick = time.monotonic()
        while not stop.is_set():
            if publishing.is_set():
                stamp = bench.get_clock().now().to_msg()
                for i, (image_pub, depth_pub, info_pub) in enumerate(pubs):
                    for msg in (image, depth, info):
                        msg.header.stamp = stamp
                    image_pub.publish(image)
                    depth_pub.publish(depth)
                    info_pub.publish(info)
                    published[i] += 1
            tick += period
            time.sleep(max(0.0, tick - time.monotonic()))

    threading.Thread(target=publish_loop, daemon=True).start()
    try:
        if not wait(lambda: "lion_node: requests" in statuses and all(  # requests: the node is active
                f"lion_node: camera {n}" in statuses for n in names), 180.0):
            print("the node did not come up", file=sys.stderr)
            node.terminate()
            print(node.communicate(timeout=30)[1][-3000:], file=sys.stderr)
            return 2
        time.sleep(3.0)  # let start-up settle
        idle_start = cpu_s(node.pid)
        time.sleep(args.window_s)
        idle_per_s = (cpu_s(node.pid) - idle_start) / args.window_s

        publishing.set()
        if not wait(lambda: all(int(camera_values(n)[1].get("frames", 0)) > 0 for n in names), 60.0):
            print("the node received no frames", file=sys.stderr)
            return 2
        time.sleep(3.0)  # warm-up
        before = {n: camera_values(n) for n in names}
        published_before = list(published)
        start_cpu, start = cpu_s(node.pid), time.monotonic()
        time.sleep(args.window_s)
        used = cpu_s(node.pid) - start_cpu
        elapsed = time.monotonic() - start
        after = {n: camera_values(n) for n in names}
    finally:
        stop.set()
        node.terminate()
        node.wait(timeout=30)
        executor.shutdown(timeout_sec=2.0)
        bench.destroy_node()
        rclpy.try_shutdown()

    def delta(name: str, key: str) -> int:
        return int(after[name][1].get(key, 0)) - int(before[name][1].get(key, 0))

    # Counts come from the node's 1 Hz /diagnostics, each stamped: rates are over their stamps.
    taken_per_s = 0.0
    print(f"{args.cameras} cameras x {args.rate_hz:g} Hz, 640x480 rgb8 + 16UC1 depth + CameraInfo, "
          f"window {elapsed:.1f} s")
    for i, name in enumerate(names):
        images, depths = delta(name, "frames"), delta(name, "depth_frames")
        span = after[name][0] - before[name][0]
        taken_per_s += (images + depths) / span
        print(f"  {name}: published {(published[i] - published_before[i]) / elapsed:.1f} Hz; the node took "
              f"{images / span:.1f} images/s ({delta(name, 'frames_skipped')} skipped) and {depths / span:.1f} "
              f"depth/s ({delta(name, 'depth_frames_skipped')} skipped) over {span:.0f} s; "
              f"its last reported rate {after[name][1].get('receive_rate_hz')} Hz")
    rate = taken_per_s
    print(f"node CPU: {100 * used / elapsed:.1f} % of a core while ingesting, {100 * idle_per_s:.1f} % idle")
    print(f"node CPU per taken frame: {1000 * used / elapsed / rate:.2f} ms, "
          f"{1000 * (used / elapsed - idle_per_s) / rate:.2f} ms without the idle cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
