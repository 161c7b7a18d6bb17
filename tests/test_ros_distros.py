"""The two ROS 2 distributions the development environment supports (`make test
LION_ROS_DISTRO=jazzy`): Jazzy's pins mirror Kilted's, so a package added for one is not
forgotten for the other, and the bootstrap refuses a distro it has no wheels for."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Kilted split ament_cmake_ros_core out of ament_cmake_ros. Jazzy's ament_cmake_ros finds
# ament_cmake_gmock/gtest and its rosidl_generator_py finds python_cmake_module.
KILTED_ONLY = {"ros-ament-cmake-ros-core"}
JAZZY_ONLY = {"ros-ament-cmake-gmock", "ros-ament-cmake-gtest", "ros-python-cmake-module"}


def pins(name: str) -> dict[str, str]:
    text = (REPO / "requirements" / name).read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", text, flags=re.M))


def test_jazzy_pins_every_package_kilted_pins():
    kilted, jazzy = pins("ros.txt"), pins("ros-jazzy.txt")
    assert set(kilted) - KILTED_ONLY == set(jazzy) - JAZZY_ONLY
    for name in set(kilted) & set(jazzy):
        if name.startswith("ros-"):
            assert kilted[name] != jazzy[name], f"{name}: the same version for both distros"
        else:  # distro-independent tools (colcon, catkin_pkg)
            assert kilted[name] == jazzy[name], f"{name}: pinned differently per distro"


def test_bootstrap_refuses_a_distro_without_wheels():
    env = dict(os.environ, LION_ROS_DISTRO="humble", LION_VENV="/nonexistent/venv")
    run = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "kilted and jazzy" in run.stderr
