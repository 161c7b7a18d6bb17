"""ROS 2 node layer: rclpy and message types only, a thin shell over `lion_ros.serving`.

node (the lifecycle node), synthetic_camera, ask_client (`lion-ask-ros`), demo (`make demo`),
declare (parameters from `serving.parameters` declared to rclpy), messages (results to
messages), markers, diagnostics.
"""
