"""The package's boundaries: only lion_ros/ros talks to ROS, so the model, runtime, serving,
training and export code imports (and is pip-installable) without it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lion_ros"
# rclpy, the message packages and our generated interfaces.
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "std_srvs", "sensor_msgs",
               "geometry_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs",
               "action_msgs", "lion_ros.ros", "lion_ros.msg", "lion_ros.srv", "lion_ros.action")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_outside_lion_ros_ros_imports_ros() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "ros"):
            continue
        ros = sorted(m for m in imported_modules(path) if m.split(".")[0] in ROS_MODULES or m.startswith(ROS_MODULES))
        if ros:
            offenders[str(path.relative_to(PACKAGE.parent))] = ros
    assert not offenders, f"ROS imports outside lion_ros/ros: {offenders}"


def test_the_check_sees_ros_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import rclpy\nfrom lion_ros.ros.node import LionNode\nfrom lion_ros import ros\n")
    assert {"rclpy", "lion_ros.ros.node", "lion_ros.ros"} <= imported_modules(module)
