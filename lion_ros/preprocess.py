"""LION's eval image transform, in numpy so ONNX Runtime / TensorRT deployments need no torch.

The reference (`ImageEvalProcessor`, same as LAVIS `blip_image_eval`) is torchvision
`Resize((224, 224), BICUBIC)` on a PIL image, `ToTensor`, CLIP `Normalize`. Resize on a PIL image
is Pillow's own antialiased bicubic (a = -0.5) on uint8, so we call Pillow directly: OpenCV's
bicubic (a = -0.75, no antialiasing) would feed the ViT visibly different pixels when
downscaling camera frames. The image is squashed (aspect ratio not kept), which is why boxes are
normalised per axis.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """Square input size and per-channel normalisation (RGB order)."""

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


DEFAULT_PREPROCESS = PreprocessConfig()


def preprocess_image(
    image: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS
) -> np.ndarray:
    """RGB uint8 HxWx3 image to the model input: float32 3xSxS, S = `config.image_size`."""
    _check_image(image)
    size = config.image_size
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    # Same float32 ops and order as ToTensor (x / 255) then Normalize ((x - mean) / std).
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255)
    pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_batch(
    images: Sequence[np.ndarray], config: PreprocessConfig = DEFAULT_PREPROCESS
) -> np.ndarray:
    """Several images to one float32 Bx3xSxS array."""
    if len(images) == 0:
        raise ValueError("preprocess_batch needs at least one image")
    return np.stack([preprocess_image(image, config) for image in images])


def preprocess_batch_torch(
    images: Sequence[np.ndarray],
    config: PreprocessConfig = DEFAULT_PREPROCESS,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`preprocess_batch` as a torch tensor on `device` (torch imported only here)."""
    import torch

    return torch.from_numpy(preprocess_batch(images, config)).to(device=device, dtype=dtype)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an RGB uint8 numpy array HxWx3, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image of shape HxWx3, got shape {image.shape}; convert grey, "
            "RGBA or BGR frames to RGB first"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected dtype uint8 (0-255), got {image.dtype}; scale float images to 0-255 and "
            "cast to uint8 first"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
