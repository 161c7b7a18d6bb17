#!/usr/bin/env python3
"""Soak test: lion_node in a subprocess (as users run it) under cameras and clients for a while.

N synthetic RGB-D cameras (lion_ros.ros.synthetic_camera: 640x480 rgb8 + 32FC1 depth + camera_info)
publish at R Hz while M clients ask questions about them: service callers, action callers and
action callers that cancel their goal after a random delay. Everything goes over real DDS to a
`python -m lion_ros.ros.node` process (the shipped lion-nano on CPU unless told otherwise).

Prints the requests sent and the replies by error code, the latency percentiles of answers, the
frames each camera published against those the node counted (its /diagnostics), the node's RSS
(start, end, slope after the warm-up) and CPU, and how the node exited on SIGINT.

Exit status: 0 when every request got its reply, the node's RSS grew less than
--max-rss-growth-mb after the warm-up, the node stayed up and exited with 0 and no traceback on
SIGINT; 1 otherwise; 2 when the run could not start (the node never became ready, got no frames,
or its services were never discovered).

    python bench/soak.py                                   # 4 cameras x 30 Hz, 10 clients, 10 min
    python bench/soak.py --duration-s 60 --cameras 2 --rate-hz 10 --clients 4 --node-threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
CLIENT_KINDS = ("service", "action", "action+cancel")  # client i has kind i % 3
NODE = "/lion_node"
_DISCOVERY_S = 30.0
_RESEND_S = 2.0  # handshake requests lost to discovery still settling are sent again after this
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 pass; 1 a request unanswered, RSS growth, the node "
                                            "died or did not exit cleanly; 2 setup failed.")
    parser.add_argument("--cameras", type=int, default=4, help="synthetic RGB-D cameras (default 4)")
    parser.add_argument("--rate-hz", type=float, default=30.0, help="frames per second per camera (default 30)")
    parser.add_argument("--width", type=int, default=640, help="image width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="image height (default 480)")
    parser.add_argument("--clients", type=int, default=10,
                        help="concurrent clients; client i is a " + ", ".join(
                            f"{kind} caller when i %% 3 == {i}" for i, kind in enumerate(CLIENT_KINDS))
                        + " (default 10)")
    parser.add_argument("--duration-s", type=float, default=600.0, help="time clients keep asking (default 600)")
    parser.add_argument("--think-s", type=float, default=1.0,
                        help="mean pause of a client between its requests, uniform in [0.5, 1.5] x this "
                             "(default 1.0)")
    parser.add_argument("--cancel-after-s", type=float, default=1.0,
                        help="cancelling clients cancel after uniform [0, this] seconds (default 1.0)")
    parser.add_argument("--request-timeout-s", type=float, default=30.0,
                        help="the node's request_timeout_s; a request without a reply this much plus "
                             "--grace-s later counts as unanswered (default 30)")
    parser.add_argument("--grace-s", type=float, default=15.0, help="see --request-timeout-s (default 15)")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="RSS samples before this are left out of the slope (default: a quarter of "
                             "--duration-s, at most 60)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="fail when the RSS fitted after the warm-up grows more than this (default 50)")
    parser.add_argument("--node-threads", type=int, default=0,
                        help="torch threads of the node (OMP_NUM_THREADS); 0 = torch's default")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra lion_node parameter, e.g. model_path:=/models/lion-4b or queue_size:=8 "
                             "(repeatable)")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0,
                        help="time for the node to load its model and become ready (default 180)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the clients (default 0)")
    parser.add_argument("--log", type=Path, default=None, help="node log file (default: a file in /tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here as JSON")
    args = parser.parse_args(argv)
    if args.cameras < 1 or args.clients < 1 or args.duration_s <= 0 or args.rate_hz <= 0:
        parser.error("--cameras, --clients, --rate-hz and --duration-s must be positive")
    if args.warmup_s is None:
        args.warmup_s = min(60.0, args.duration_s / 4)
    return args


# Node process -------------------------------------------------------------------------------

class NodeProcess:
    """`python -m lion_ros.ros.node` with its log in a file, its RSS and CPU read from /proc."""

    def __init__(self, camera_names: list[str], args: argparse.Namespace, log_path: Path):
        params = [f"cameras:=[{', '.join(camera_names)}]", f"request_timeout_s:={args.request_timeout_s}",
                  *args.node_param]
        cmd = [sys.executable, "-m", "lion_ros.ros.node", "--ros-args"]
        for p in params:
            cmd += ["-p", p]
        env = dict(os.environ)
        if args.node_threads > 0:
            env["OMP_NUM_THREADS"] = str(args.node_threads)
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.cmd = cmd

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields_after_name = f.read().rsplit(")", 1)[1].split()
        return (int(fields_after_name[11]) + int(fields_after_name[12])) / _TICKS_PER_S  # utime + stime

    def interrupt(self, timeout_s: float = 10.0) -> tuple[int | None, float]:
        """SIGINT, as Ctrl-C does; (exit code or None if it had to be killed, seconds to exit)."""
        start = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            code: int | None = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self._log.close()
        return code, time.monotonic() - start

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback (most recent call last)")


class ResourceSampler(threading.Thread):
    """The node's RSS and CPU time once a second, from the start of the measured run."""

    def __init__(self, node: NodeProcess):
        super().__init__(daemon=True)
        self.node = node
        self.samples: list[tuple[float, float, float]] = []  # (t, rss MB, cpu s)
        self.start_time = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set() and self.node.alive():
            try:
                self.samples.append((time.monotonic() - self.start_time, self.node.rss_mb(), self.node.cpu_s()))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._halt.wait(1.0)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# Clients ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """What one client saw; merged at the end."""

    sent: Counter = field(default_factory=Counter)  # kind -> requests sent
    replies: dict = field(default_factory=lambda: defaultdict(Counter))  # kind -> code name -> n
    unanswered: Counter = field(default_factory=Counter)  # "service" / "goal" / "result" / "cancel"
    latency_ms: dict = field(default_factory=lambda: defaultdict(list))  # kind -> ms of OK answers
    cancels_sent: int = 0
    cancels_answered: int = 0


def _wait(future: Any, timeout_s: float) -> bool:
    """Block this thread until an rclpy future (completed by the executor thread) is done."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    return done.wait(timeout_s)


class Client:
    """One caller: a node with an Ask service client or action client, asking on its own thread."""

    def __init__(self, index: int, context: Any, questions: dict[str, list[str]], args: argparse.Namespace):
        import rclpy
        from rclpy.action import ActionClient

        from lion_ros.action import Ask as AskAction
        from lion_ros.srv import Ask

        self.kind = CLIENT_KINDS[index % len(CLIENT_KINDS)]
        self.node = rclpy.create_node(f"soak_client_{index}", context=context)
        self._ask, self._goal = Ask.Request, AskAction.Goal
        if self.kind == "service":
            self.client = self.node.create_client(Ask, f"{NODE}/ask")
        else:
            self.client = ActionClient(self.node, AskAction, f"{NODE}/ask")
        self.questions = questions
        self.args = args
        self.rng = random.Random(args.seed * 1000 + index)
        self.tally = Tally()
        self.reply_timeout_s = args.request_timeout_s + args.grace_s
        self.thread: threading.Thread | None = None

    def discovered(self, timeout_s: float) -> bool:
        if self.kind == "service":
            return self.client.wait_for_service(timeout_sec=timeout_s)
        return self.client.wait_for_server(timeout_sec=timeout_s)

    def handshake(self, deadline: float) -> bool:
        """One reply to a request the node rejects at once (an empty question), resent until it
        comes: a request sent while discovery still settles can be lost on the way back."""
        while time.monotonic() < deadline:
            if self.kind == "service":
                if _wait(self.client.call_async(self._ask(question="")), _RESEND_S):
                    return True
                continue
            send = self.client.send_goal_async(self._goal(question=""))
            if not _wait(send, _RESEND_S):
                continue
            if _wait(send.result().get_result_async(), _RESEND_S):
                return True
        return False

    def start(self, end: float) -> None:
        self.thread = threading.Thread(target=self._loop, args=(end,), name=f"soak-{self.node.get_name()}",
                                       daemon=True)
        self.thread.start()

    def _loop(self, end: float) -> None:
        while time.monotonic() < end:
            camera = self.rng.choice(sorted(self.questions))
            question = self.rng.choice(self.questions[camera])
            start = time.monotonic()
            code = self._service(question, camera) if self.kind == "service" else self._action(question, camera)
            if code is not None:
                self.tally.replies[self.kind][code] += 1
                if code == "OK":
                    self.tally.latency_ms[self.kind].append(1000.0 * (time.monotonic() - start))
            time.sleep(self.args.think_s * self.rng.uniform(0.5, 1.5))

    def _service(self, question: str, camera: str) -> str | None:
        self.tally.sent[self.kind] += 1
        future = self.client.call_async(self._ask(question=question, camera=camera))
        if not _wait(future, self.reply_timeout_s):
            self.tally.unanswered["service"] += 1
            return None
        return _code_name(future.result().error_code)

    def _action(self, question: str, camera: str) -> str | None:
        self.tally.sent[self.kind] += 1
        send = self.client.send_goal_async(self._goal(question=question, camera=camera))
        if not _wait(send, self.reply_timeout_s):
            self.tally.unanswered["goal"] += 1
            return None
        handle = send.result()
        if not handle.accepted:
            return "GOAL_REJECTED"
        result = handle.get_result_async()
        if self.kind == "action+cancel":
            time.sleep(self.rng.uniform(0.0, self.args.cancel_after_s))
            self.tally.cancels_sent += 1
            if _wait(handle.cancel_goal_async(), self.reply_timeout_s):
                self.tally.cancels_answered += 1
            else:
                self.tally.unanswered["cancel"] += 1
        if not _wait(result, self.reply_timeout_s):
            self.tally.unanswered["result"] += 1
            return None
        return _code_name(result.result().result.error_code)


def _code_name(code: int) -> str:
    from lion_ros.serving.errors import ErrorCode

    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNDOCUMENTED_{code}"


# Diagnostics --------------------------------------------------------------------------------

class DiagnosticsMonitor:
    """The node's latest /diagnostics statuses by name, as {key: value}."""

    def __init__(self, node: Any):
        from diagnostic_msgs.msg import DiagnosticArray

        self.latest: dict[str, dict[str, str]] = {}
        self.messages: dict[str, str] = {}
        self.received = 0
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_message, 10)

    def _on_message(self, msg: Any) -> None:
        with self._lock:
            self.received += 1
            for status in msg.status:
                self.latest[status.name] = {kv.key: kv.value for kv in status.values}
                self.messages[status.name] = status.message

    def status(self, suffix: str) -> tuple[dict[str, str], str]:
        with self._lock:
            for name, values in self.latest.items():
                if name.endswith(suffix):
                    return dict(values), self.messages[name]
        return {}, ""

    def wait_fresh(self, timeout_s: float) -> None:
        """Until a message published after this call has arrived (they come once a second)."""
        first = self.received
        deadline = time.monotonic() + timeout_s
        while self.received < first + 2 and time.monotonic() < deadline:
            time.sleep(0.05)


# Run ----------------------------------------------------------------------------------------

def _spin(executor: Any) -> threading.Thread:
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return thread


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"n": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(max(values))}


def rss_growth(samples: list[tuple[float, float, float]], warmup_s: float) -> dict[str, float]:
    """Least-squares RSS slope after the warm-up, and the growth it implies over that window."""
    window = [(t, rss) for t, rss, _ in samples if t >= warmup_s]
    if len(window) < 3:
        return {}
    t, rss = np.array(window).T
    slope_per_s = float(np.polyfit(t, rss, 1)[0])
    return {"start_mb": samples[0][1], "end_mb": samples[-1][1], "max_mb": max(s[1] for s in samples),
            "slope_mb_per_min": 60.0 * slope_per_s, "fitted_growth_mb": slope_per_s * (t[-1] - t[0]),
            "window_s": float(t[-1] - t[0])}


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    # Private DDS traffic, as the test suite does: a random domain, discovery on this machine only.
    # Set before rclpy initialises; the node subprocess inherits them.
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(1, 101)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from lion_ros.ros.demo import scripted_questions
    from lion_ros.ros.synthetic_camera import SyntheticCamera

    names = [f"cam{i}" for i in range(args.cameras)]
    log_path = args.log or Path(f"/tmp/lion_soak_node_{os.getpid()}.log")
    node = NodeProcess(names, args, log_path)
    summary: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "node_log": str(log_path), "failures": []}
    print(f"soak: node pid {node.proc.pid} ({' '.join(node.cmd[1:])}), log {log_path}, "
          f"ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}", flush=True)

    contexts = []

    def context() -> Any:
        ctx = rclpy.context.Context()
        rclpy.init(context=ctx)
        contexts.append(ctx)
        return ctx

    executors: list[Any] = []
    monitor_node: Any = None
    cameras: list[Any] = []
    clients: list[Client] = []
    try:
        # The monitor: /diagnostics tells when the node is ready and what it received.
        monitor_node = rclpy.create_node("soak_monitor", context=context())
        monitor = DiagnosticsMonitor(monitor_node)
        executors.append(SingleThreadedExecutor(context=monitor_node.context))
        executors[-1].add_node(monitor_node)
        _spin(executors[-1])
        if not _wait_until(lambda: not node.alive() or monitor.status(": runtime")[1] == "ready",
                           args.startup_timeout_s):
            summary["failures"].append(f"the node was not ready within {args.startup_timeout_s:.0f} s")
            return EXIT_SETUP, summary
        if not node.alive():
            summary["failures"].append(f"the node exited with {node.proc.returncode} while starting")
            return EXIT_SETUP, summary

        # Cameras, in one participant, on their own executor.
        camera_ctx = context()
        camera_exec = MultiThreadedExecutor(num_threads=min(4, args.cameras), context=camera_ctx)
        for i, name in enumerate(names):
            cam = SyntheticCamera(f"soak_camera_{i}", context=camera_ctx, parameter_overrides=[
                Parameter("camera", value=name), Parameter("rate_hz", value=args.rate_hz),
                Parameter("width", value=args.width), Parameter("height", value=args.height),
                Parameter("seed", value=i)])
            camera_exec.add_node(cam)
            cameras.append(cam)
        executors.append(camera_exec)
        _spin(camera_exec)
        # Clients start once the node has frames from every camera: NO_FRAME is not what a soak measures.
        if not _wait_until(lambda: all(int(monitor.status(f"camera {n}")[0].get("frames", 0)) > 0 for n in names)
                           and all(c.scene is not None for c in cameras), 60.0):
            summary["failures"].append("the node received no frame from some camera within 60 s")
            return EXIT_SETUP, summary
        questions = {c.params.camera: [q for _, q, _ in scripted_questions(c.scene)] for c in cameras}

        # Clients, in one participant (replaced once if discovery fails, as tests/ros_harness.py does).
        for _attempt in range(2):
            client_ctx = context()
            clients = [Client(i, client_ctx, questions, args) for i in range(args.clients)]
            client_exec = MultiThreadedExecutor(num_threads=4, context=client_ctx)
            for c in clients:
                client_exec.add_node(c.node)
            executors.append(client_exec)
            _spin(client_exec)
            deadline = time.monotonic() + _DISCOVERY_S
            if all(c.discovered(max(0.1, deadline - time.monotonic())) and c.handshake(deadline) for c in clients):
                break
            client_exec.shutdown(timeout_sec=2.0)
            executors.remove(client_exec)
            for c in clients:
                c.node.destroy_node()
        else:
            summary["failures"].append("the clients never got a first reply (DDS discovery)")
            return EXIT_SETUP, summary

        kinds = Counter(c.kind for c in clients)
        print(f"soak: {args.cameras} cameras x {args.rate_hz:g} Hz ({args.width}x{args.height} rgb8 + 32FC1 depth "
              f"+ camera_info), {args.clients} clients ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
              f"{args.duration_s:g} s", flush=True)
        sampler = ResourceSampler(node)
        sampler.start()
        published_before = [c.frames_published for c in cameras]
        received_before = {n: int(monitor.status(f"camera {n}")[0].get("frames", 0)) for n in names}
        start = time.monotonic()
        for c in clients:
            c.start(start + args.duration_s)
        next_report = start + 60.0
        while any(c.thread.is_alive() for c in clients):
            time.sleep(0.5)
            if not node.alive():
                summary["failures"].append(f"the node died (exit code {node.proc.returncode})")
                break
            if time.monotonic() >= next_report:
                next_report += 60.0
                done = sum(sum(n for t in c.tally.replies.values() for n in t.values()) for c in clients)
                rss = sampler.samples[-1][1] if sampler.samples else float("nan")
                print(f"  {time.monotonic() - start:5.0f} s: {done} replies, node RSS {rss:.0f} MB", flush=True)
        elapsed = time.monotonic() - start
        camera_exec.shutdown(timeout_sec=2.0)
        executors.remove(camera_exec)
        sampler.stop()
        published = [c.frames_published - b for c, b in zip(cameras, published_before)]
        monitor.wait_fresh(5.0)

        summary.update(_summarise(clients, cameras, names, published, received_before, monitor, sampler,
                                  elapsed, args))
    finally:
        for executor in executors:
            executor.shutdown(timeout_sec=2.0)
        code, exit_s = node.interrupt()
        summary["node_exit"] = {"code": code, "seconds": round(exit_s, 2), "tracebacks": node.tracebacks()}
        for n in [monitor_node, *cameras, *(c.node for c in clients)]:
            if n is not None:
                n.destroy_node()
        for ctx in contexts:
            rclpy.try_shutdown(context=ctx)

    if summary["unanswered"]:
        summary["failures"].append(f"{summary['unanswered']} requests got no reply")
    exit_ = summary["node_exit"]
    if exit_["code"] != 0 or exit_["tracebacks"]:
        summary["failures"].append(f"the node did not exit cleanly on SIGINT (code {exit_['code']}, "
                                   f"{exit_['tracebacks']} tracebacks in its log)")
    growth = summary["rss"].get("fitted_growth_mb", 0.0)
    if growth > args.max_rss_growth_mb:
        summary["failures"].append(f"node RSS grew {growth:.0f} MB after the warm-up (bound "
                                   f"{args.max_rss_growth_mb:g} MB)")
    return (EXIT_FAILED if summary["failures"] else EXIT_OK), summary


def _summarise(clients: list[Client], cameras: list[Any], names: list[str], published: list[int],
               received_before: dict[str, int], monitor: DiagnosticsMonitor, sampler: ResourceSampler,
               elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    sent: Counter = Counter()
    replies: dict[str, Counter] = defaultdict(Counter)
    unanswered: Counter = Counter()
    latency: list[float] = []
    cancels_sent = cancels_answered = 0
    for c in clients:
        sent.update(c.tally.sent)
        for kind, codes in c.tally.replies.items():
            replies[kind].update(codes)
        unanswered.update(c.tally.unanswered)
        for values in c.tally.latency_ms.values():
            latency.extend(values)
        cancels_sent += c.tally.cancels_sent
        cancels_answered += c.tally.cancels_answered
    frames = {}
    for name, count in zip(names, published):
        values, message = monitor.status(f"camera {name}")
        received = int(values.get("frames", 0)) - received_before[name]
        frames[name] = {"published": count, "received": received, "diagnostics": values, "status": message}
    cpu = (sampler.samples[-1][2] - sampler.samples[0][2]) / max(1e-9, sampler.samples[-1][0] - sampler.samples[0][0]) \
        if len(sampler.samples) > 1 else float("nan")
    requests_status, _ = monitor.status(": requests")
    return {"elapsed_s": round(elapsed, 1), "sent": dict(sent), "replies": {k: dict(v) for k, v in replies.items()},
            "unanswered": sum(unanswered.values()), "unanswered_by_step": dict(unanswered),
            "cancels": {"sent": cancels_sent, "answered": cancels_answered},
            "latency_ms_ok": percentiles(latency), "frames": frames,
            "rss": rss_growth(sampler.samples, args.warmup_s), "node_cpu_cores": cpu,
            "rss_samples": [(round(t, 1), round(rss, 1)) for t, rss, _ in sampler.samples],
            "node_requests": requests_status}


def report(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    def line(text: str = "") -> None:
        print(text, file=out)

    if "sent" in summary:
        total_sent = sum(summary["sent"].values())
        total_replies = sum(sum(v.values()) for v in summary["replies"].values())
        line(f"requests: {total_sent} sent, {total_replies} replies, {summary['unanswered']} unanswered"
             + (f" {summary['unanswered_by_step']}" if summary["unanswered"] else "")
             + f" in {summary['elapsed_s']:.0f} s")
        for kind in CLIENT_KINDS:
            if kind in summary["sent"]:
                codes = ", ".join(f"{code} {n}" for code, n in sorted(summary["replies"].get(kind, {}).items()))
                line(f"  {kind:14s} sent {summary['sent'][kind]:6d}: {codes}")
        line(f"  cancel requests: {summary['cancels']['sent']} sent, {summary['cancels']['answered']} answered")
        lat = summary["latency_ms_ok"]
        if lat:
            line(f"latency of answers (OK, client side): p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
                 f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms (n = {lat['n']})")
        line("node's request counters (/diagnostics): "
             + ", ".join(f"{k} {v}" for k, v in summary["node_requests"].items()))
        for name, f in summary["frames"].items():
            share = f" ({100.0 * f['received'] / f['published']:.0f} %)" if f["published"] else ""
            extra = ", ".join(f"{k} {v}" for k, v in f["diagnostics"].items() if k not in ("frames", "frame_id"))
            line(f"frames {name}: {f['published']} published, {f['received']} received by the node{share}"
                 + (f"; /diagnostics: {extra}" if extra else ""))
        rss = summary["rss"]
        if rss:
            line(f"node RSS: {rss['start_mb']:.0f} MB at start, {rss['end_mb']:.0f} MB at end, max "
                 f"{rss['max_mb']:.0f} MB; slope {rss['slope_mb_per_min']:+.2f} MB/min over the last "
                 f"{rss['window_s']:.0f} s (fitted growth {rss['fitted_growth_mb']:+.1f} MB)")
        line(f"node CPU: {summary['node_cpu_cores']:.2f} cores on average")
    if "node_exit" in summary:
        e = summary["node_exit"]
        line(f"node exit on SIGINT: code {e['code']} after {e['seconds']:.1f} s, {e['tracebacks']} tracebacks in "
             f"its log ({summary['node_log']})")
    line("PASS" if not summary["failures"] else "FAIL: " + "; ".join(summary["failures"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, summary = run(args)
    report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
