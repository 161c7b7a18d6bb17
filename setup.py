"""pip-installable library part of lion_ros (model, runtime, training, export): no ROS needed.

The ROS 2 package (interfaces, nodes, launch files) is built with colcon from CMakeLists.txt.
torch is deliberately not a requirement: install the build for your platform first (CPU or CUDA
wheel on a desktop, NVIDIA's wheel on a Jetson); see README "Install".
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "lion_ros" / "__init__.py").read_text()).group(1)

setup(
    name="lion_ros",
    version=version,
    description="LION (JiuTian-LION) grounded VQA for robots: model, runtime, training, export",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lion_ros", "lion_ros.*"]),
    package_data={"lion_ros": ["assets/**/*", "configs/**/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "transformers>=4.57,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.66",
    ],
    extras_require={
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "test": ["pytest>=8", "hypothesis>=6"],
    },
    entry_points={
        "console_scripts": [
            "lion-ask-ros = lion_ros.ros.ask_client:main",
            "lion-ask = lion_ros.cli.ask:main",
            "lion-convert = lion_ros.cli.convert:main",
            "lion-train = lion_ros.train.cli:main",
            "lion-eval = lion_ros.eval.cli:main",
            "lion-build-engines = lion_ros.export.cli:main",
        ]
    },
)
