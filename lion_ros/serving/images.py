"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Works on any object with the message's fields (duck typing), so it is testable without ROS.
Colour images become RGB uint8 HxWx3; depth images become float32 metres with NaN where the
sensor reported nothing.
"""
from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

from lion_ros.serving.errors import AskError, ErrorCode

# encoding -> (numpy dtype, channels)
_COLOUR = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4),
           "bgra8": (np.uint8, 4), "mono8": (np.uint8, 1)}
_DEPTH = {"16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}
COLOUR_ENCODINGS = tuple(_COLOUR)
DEPTH_ENCODINGS = tuple(_DEPTH)


def _pixels(msg: Any, layouts: dict, max_bytes: int) -> np.ndarray:
    """The message's pixel array (H x W x C), honouring row padding and byte order."""
    encoding = msg.encoding
    if encoding not in layouts:
        raise AskError(ErrorCode.UNSUPPORTED_ENCODING,
                       f"image encoding {encoding!r} is not supported; use one of {', '.join(layouts)}")
    dtype, channels = layouts[encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = msg.data
    row_bytes = width * channels * dtype.itemsize
    if height <= 0 or width <= 0:
        raise AskError(ErrorCode.BAD_IMAGE, f"image has zero size ({width}x{height})")
    if len(data) > max_bytes:
        raise AskError(ErrorCode.BAD_IMAGE, f"image has {len(data)} bytes; the limit is {max_bytes}")
    if step < row_bytes or len(data) != height * step:
        raise AskError(ErrorCode.BAD_IMAGE, f"image data has {len(data)} bytes, expected height*step = "
                                            f"{height}*{step} with step >= {row_bytes}")
    raw = np.asarray(data, dtype=np.uint8) if isinstance(data, list) else np.frombuffer(data, dtype=np.uint8)
    rows = raw.reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def image_to_rgb(msg: Any, max_bytes: int) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> RGB uint8 HxWx3."""
    pixels = _pixels(msg, _COLOUR, max_bytes)
    convert = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
               "mono8": cv2.COLOR_GRAY2RGB}.get(msg.encoding)
    if convert is None:
        return pixels if pixels.flags.writeable else pixels.copy()
    return cv2.cvtColor(pixels, convert)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size): C0-CF except DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


def compressed_size(data: Any) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, without decoding (reads only the header).

    A compressed image is a few hundred KiB that can claim 20000x20000 pixels; knowing the size
    first is what keeps a decompression bomb from ever being decoded.
    """
    view = memoryview(data).cast("B")  # bytes or the message's array('B'): no copy
    if bytes(view[:8]) == _PNG_SIGNATURE:
        if len(view) < 24 or bytes(view[12:16]) != b"IHDR":
            raise AskError(ErrorCode.BAD_IMAGE, "PNG without an IHDR header")
        return struct.unpack(">II", view[16:24])
    if bytes(view[:2]) == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(view):
            if view[pos] != 0xFF:
                raise AskError(ErrorCode.BAD_IMAGE, f"JPEG header is corrupt at byte {pos}")
            marker = view[pos + 1]
            if marker == 0xFF:  # fill byte before a marker
                pos += 1
                continue
            if marker in _JPEG_STANDALONE:
                pos += 2
                continue
            (length,) = struct.unpack(">H", view[pos + 2:pos + 4])
            if marker in _JPEG_SOF and length >= 7 and pos + 9 <= len(view):
                height, width = struct.unpack(">HH", view[pos + 5:pos + 9])
                return width, height
            if marker == 0xDA or length < 2:  # image data before any frame header
                break
            pos += 2 + length
        raise AskError(ErrorCode.BAD_IMAGE, "JPEG without a frame header (SOF) giving its size")
    raise AskError(ErrorCode.BAD_IMAGE, "compressed image is neither PNG nor JPEG")


def check_size(msg: Any, compressed: bool, max_pixels: int) -> None:
    """BAD_IMAGE when the image is larger than `max_pixels`: cheap (header fields only), so it
    runs before a request is queued and a rejected frame never reaches the worker."""
    if compressed:
        width, height = compressed_size(msg.data)
    else:
        width, height = int(msg.width), int(msg.height)
    if width * height > max_pixels:
        raise AskError(ErrorCode.BAD_IMAGE, f"image is {width}x{height} = {width * height} pixels; "
                                            f"the limit is {max_pixels} (max_image_pixels)")


def compressed_to_rgb(msg: Any, max_bytes: int, max_pixels: int) -> np.ndarray:
    """sensor_msgs/CompressedImage (PNG or JPEG) -> RGB uint8 HxWx3, sized from its header first."""
    data = msg.data
    if len(data) == 0:
        raise AskError(ErrorCode.BAD_IMAGE, "compressed image is empty")
    if len(data) > max_bytes:
        raise AskError(ErrorCode.BAD_IMAGE, f"compressed image has {len(data)} bytes; the limit is {max_bytes}")
    check_size(msg, True, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AskError(ErrorCode.BAD_IMAGE, f"compressed image ({msg.format or 'unknown format'}) does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def depth_to_metres(msg: Any, max_bytes: int) -> np.ndarray:
    """Depth image (16UC1/mono16 in mm, 32FC1 in m) -> float32 HxW metres, NaN = no reading."""
    pixels = _pixels(msg, _DEPTH, max_bytes)[:, :, 0]
    if pixels.dtype == np.uint16:
        depth = pixels.astype(np.float32) / 1000.0
        depth[pixels == 0] = np.nan
        return depth
    depth = pixels.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def fill_image(msg: Any, rgb: np.ndarray) -> Any:
    """Fill a sensor_msgs/Image (header left to the caller) with an RGB uint8 HxWx3 array."""
    height, width = rgb.shape[:2]
    msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, "rgb8", 0
    msg.step = width * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg
