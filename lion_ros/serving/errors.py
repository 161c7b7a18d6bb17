"""Error codes of an answer, mirroring lion_ros/msg/ErrorCode.msg for code that runs without ROS."""
from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    OK = 0
    INVALID_ARGUMENT = 1
    UNKNOWN_CAMERA = 2
    NO_FRAME = 3
    STALE_FRAME = 4
    UNSUPPORTED_ENCODING = 5
    BAD_IMAGE = 6
    BUSY = 7
    TIMEOUT = 8
    CANCELED = 9
    NOT_READY = 10
    INTERNAL = 11


class AskError(Exception):
    """A request that cannot be answered; carries the code the client receives."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
