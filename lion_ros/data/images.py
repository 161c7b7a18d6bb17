"""Reading dataset images from disk for training and evaluation."""
from __future__ import annotations

import numpy as np

# Larger than any camera or dataset image we expect, small enough that a crafted header cannot
# make a worker allocate gigabytes (Pillow's own bomb check only warns below twice its limit).
MAX_IMAGE_PIXELS = 64_000_000


class ImageReadError(OSError):
    """An image file is missing, unreadable or implausibly large."""


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.width, image.height
    except FileNotFoundError as e:
        raise ImageReadError(f"image not found: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def load_rgb(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file (any mode Pillow reads; EXIF orientation is not applied,
    as in the public datasets' box annotations)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ImageReadError(f"{path}: {image.width}x{image.height} exceeds {max_pixels} pixels")
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as e:
        raise ImageReadError(f"image not found: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {path}: {e}") from e
