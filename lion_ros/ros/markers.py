"""RViz markers for answers with 3D positions: a sphere and a label per located box."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from builtin_interfaces.msg import Duration
from visualization_msgs.msg import Marker, MarkerArray

from lion_ros.api import GroundedBox
from lion_ros.serving.requests import Position

_SPHERE_M = 0.05
_LIFETIME = Duration(sec=5)  # markers of an answer that is not refreshed fade out


def markers(header: Any, namespace: str, boxes: Sequence[GroundedBox], points: Sequence[Position]) -> MarkerArray:
    """A DELETEALL for `namespace` first, so markers of the previous answer disappear."""
    array = MarkerArray(markers=[Marker(header=header, ns=namespace, action=Marker.DELETEALL)])
    for i, (box, point) in enumerate(zip(boxes, points)):
        if point is None:
            continue
        sphere = Marker(header=header, ns=namespace, id=2 * i, type=Marker.SPHERE, action=Marker.ADD,
                        lifetime=_LIFETIME)
        sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z = point
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = _SPHERE_M
        sphere.color.r, sphere.color.g, sphere.color.a = 1.0, 0.3, 0.9
        text = Marker(header=header, ns=namespace, id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, text=box.phrase, lifetime=_LIFETIME)
        text.pose = copy.deepcopy(sphere.pose)
        text.pose.position.y -= 1.5 * _SPHERE_M  # optical frame: -y is up
        text.scale.z = _SPHERE_M
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        array.markers += [sphere, text]
    return array
