"""synthetic_camera: publishes rendered tabletop scenes (lion_ros.data.synthetic) as a camera.

<camera>/image (rgb8), <camera>/depth (32FC1, metres) and <camera>/camera_info, all three with
one stamp and frame_id per tick, so depth and intrinsics match the colour frame exactly.
"""
from __future__ import annotations

import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from lion_ros.data.synthetic import Scene, SceneConfig, render_scene, scene_seed
from lion_ros.ros.declare import declare, read
from lion_ros.serving.images import fill_image
from lion_ros.serving.parameters import SyntheticCameraParams


def render(params: SyntheticCameraParams, index: int) -> Scene:
    """Scene `index` of the synthetic test split at the configured resolution."""
    return render_scene(scene_seed("test", index), SceneConfig(width=params.width, height=params.height), "test")


class SyntheticCamera(Node):
    def __init__(self, node_name: str = "synthetic_camera", **kwargs):
        super().__init__(node_name, **kwargs)
        declare(self, SyntheticCameraParams)
        self.params = read(self, SyntheticCameraParams)
        p = self.params
        self._image_pub = self.create_publisher(Image, f"{p.camera}/image", 2)
        self._depth_pub = self.create_publisher(Image, f"{p.camera}/depth", 2)
        self._info_pub = self.create_publisher(CameraInfo, f"{p.camera}/camera_info", 2)
        self._start = time.monotonic()
        self._index: int | None = None
        self._messages: tuple = ()
        self.scene: Scene | None = None
        self.frames_published = 0  # ticks (image + depth + camera_info); bench/soak.py reports it
        self.create_timer(1.0 / p.rate_hz, self._tick)
        self.get_logger().info(f"publishing {p.width}x{p.height} scenes at {p.rate_hz} Hz on "
                               f"{self._image_pub.topic_name} (+ depth, camera_info), frame {p.frame_id}")

    def _tick(self) -> None:
        p = self.params
        index = p.seed + (int((time.monotonic() - self._start) / p.scene_period_s) if p.scene_period_s > 0 else 0)
        if index != self._index:  # render once per scene; the tick only restamps
            self._index, self.scene = index, render(p, index)
            self._messages = self._build(self.scene)
        stamp = self.get_clock().now().to_msg()
        for msg, pub in zip(self._messages, (self._image_pub, self._depth_pub, self._info_pub)):
            msg.header.stamp = stamp
            pub.publish(msg)
        self.frames_published += 1

    def _build(self, scene: Scene) -> tuple[Image, Image, CameraInfo]:
        frame_id = self.params.frame_id
        image = fill_image(Image(), scene.rgb)
        image.header.frame_id = frame_id
        depth = np.ascontiguousarray(scene.depth, dtype=np.float32)
        depth_msg = Image(height=depth.shape[0], width=depth.shape[1], encoding="32FC1", is_bigendian=0,
                          step=depth.shape[1] * 4, data=depth.tobytes())
        depth_msg.header.frame_id = frame_id
        intr = scene.intrinsics
        info = CameraInfo(width=intr.width, height=intr.height, distortion_model="plumb_bob",
                          d=[0.0] * 5, k=intr.k, p=intr.p, r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
        info.header.frame_id = frame_id
        return image, depth_msg, info


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = SyntheticCamera()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
