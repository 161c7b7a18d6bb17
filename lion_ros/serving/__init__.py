"""Serving questions about camera frames, without ROS: everything behind the node that is not
rclpy.

parameters (every node parameter: names, types, ranges, descriptions), errors (the error codes),
images (message fields to RGB arrays, with bounds), frames (latest frames, feature cache), depth
(3D points from depth + intrinsics), requests (one request end to end), worker (the bounded
queue and its thread), standing (standing-query schedule), latency, annotate (boxes drawn on an
image), runtime_factory (the runtime named by the parameters).
"""
