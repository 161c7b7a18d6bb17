"""Declare a parameter dataclass (lion_ros.serving.parameters) on an rclpy node and read it back."""
from __future__ import annotations

from typing import TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from lion_ros.serving.parameters import from_mapping, specs

T = TypeVar("T")


def declare(node: Node, cls: type) -> None:
    for spec in specs(cls):
        descriptor = ParameterDescriptor(description=spec.description)
        if spec.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
        if spec.range is not None and spec.type is int:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
        elif spec.range is not None and spec.type is float:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
        # An empty list cannot carry its element type, so it is declared by type alone.
        default = spec.default if spec.default != [] else Parameter.Type.STRING_ARRAY
        node.declare_parameter(spec.name, default, descriptor)


def read(node: Node, cls: type[T]) -> T:
    """The node's current values as the dataclass; ValueError names a bad parameter."""
    values = {}
    for spec in specs(cls):
        value = node.get_parameter_or(spec.name, None).value  # None: declared by type, never set
        values[spec.name] = spec.default if value is None else value
    return from_mapping(cls, values)
