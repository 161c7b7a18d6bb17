"""lion_node on a desktop GPU: parameters from config/desktop.yaml, common ones as arguments.

  ros2 launch lion_ros desktop.launch.py cameras:="['front', 'rear']" device:=cpu
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    config = os.path.join(get_package_share_directory("lion_ros"), "config", "desktop.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of lion_node."),
        DeclareLaunchArgument("params_file", default_value=config, description="lion_node parameter file."),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Model directory; empty = shipped lion-nano."),
        DeclareLaunchArgument("backend", default_value="pytorch", description="pytorch | onnxruntime | tensorrt."),
        DeclareLaunchArgument("device", default_value="cuda", description="cpu | cuda."),
        DeclareLaunchArgument("precision", default_value="auto", description="auto | fp32 | mixed | fp16."),
        DeclareLaunchArgument("cameras", default_value="['camera']", description="Camera names (YAML list)."),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw | compressed."),
        DeclareLaunchArgument("qos_reliability", default_value="best_effort", description="best_effort | reliable."),
        Node(
            package="lion_ros", executable="lion_node", name="lion_node",
            namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), {
                "model_path": LaunchConfiguration("model_path"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "precision": LaunchConfiguration("precision"),
                "cameras": LaunchConfiguration("cameras"),
                "image_transport": LaunchConfiguration("image_transport"),
                "qos_reliability": LaunchConfiguration("qos_reliability"),
            }],
        ),
    ])
