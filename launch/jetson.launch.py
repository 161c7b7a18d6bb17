"""lion_node on a Jetson with TensorRT engines: parameters from config/jetson.yaml.

  ros2 launch lion_ros jetson.launch.py cameras:="['front']" model_path:=/data/lion-nano
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    config = os.path.join(get_package_share_directory("lion_ros"), "config", "jetson.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of lion_node."),
        DeclareLaunchArgument("params_file", default_value=config, description="lion_node parameter file."),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Model directory (with the TensorRT engines); empty = shipped lion-nano."),
        DeclareLaunchArgument("precision", default_value="fp16", description="fp16 | fp32 (engine precision)."),
        DeclareLaunchArgument("cameras", default_value="['camera']", description="Camera names (YAML list)."),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw | compressed."),
        DeclareLaunchArgument("max_new_tokens", default_value="48", description="Default answer length limit."),
        Node(
            package="lion_ros", executable="lion_node", name="lion_node",
            namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), {
                "backend": "tensorrt",
                "device": "cuda",
                "model_path": LaunchConfiguration("model_path"),
                "precision": LaunchConfiguration("precision"),
                "cameras": LaunchConfiguration("cameras"),
                "image_transport": LaunchConfiguration("image_transport"),
                "generation.max_new_tokens": LaunchConfiguration("max_new_tokens"),
            }],
        ),
    ])
