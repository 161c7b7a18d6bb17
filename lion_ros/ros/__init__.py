"""ROS 2 node layer: a thin rclpy shell over plain-Python pieces (conversions, frame store,
request worker, depth statistics, standing-query schedule) that are testable without ROS.

Modules that import rclpy or message packages: node, synthetic_camera, ask_client (lazily),
ros_parameters, messages, markers, diagnostics. Everything else imports without ROS:
params (all parameters), images (conversions), frames (latest frames, feature cache), depth
(3D points), worker (bounded queue), pipeline (one request end to end), standing (schedule),
latency, annotate, runtime_factory (make_runtime), errors.
"""
