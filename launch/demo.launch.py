"""The synthetic RGB-D camera and lion_node (lion-nano on CPU by default), ready for questions:

  ros2 launch lion_ros demo.launch.py
  lion-ask-ros "where is the red cup?"
"""
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    camera = LaunchConfiguration("camera")
    return LaunchDescription([
        DeclareLaunchArgument("camera", default_value="camera", description="Camera name."),
        DeclareLaunchArgument("rate_hz", default_value="5.0", description="Synthetic camera rate."),
        DeclareLaunchArgument("scene_period_s", default_value="10.0", description="Seconds per synthetic scene."),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Model directory; empty = shipped lion-nano."),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda."),
        Node(
            package="lion_ros", executable="synthetic_camera", name="synthetic_camera", output="screen",
            parameters=[{
                "camera": camera,
                "rate_hz": LaunchConfiguration("rate_hz"),
                "scene_period_s": LaunchConfiguration("scene_period_s"),
            }],
        ),
        Node(
            package="lion_ros", executable="lion_node", name="lion_node", output="screen", emulate_tty=True,
            parameters=[{
                "cameras": [camera],
                "model_path": LaunchConfiguration("model_path"),
                "device": LaunchConfiguration("device"),
                "qos_reliability": "reliable",
            }],
        ),
    ])
