"""Eval transform: PIL bicubic squash to SxS, [0, 1], CLIP normalisation, CHW float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lion_ros.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    PreprocessConfig,
    preprocess_batch,
    preprocess_batch_torch,
    preprocess_image,
)

MEAN = np.asarray(CLIP_MEAN, np.float32)
STD = np.asarray(CLIP_STD, np.float32)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random image (upsampled noise), closer to a camera frame than white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _torchvision_like(image: np.ndarray, size: int) -> torch.Tensor:
    """Reference written the torchvision way: PIL resize, ToTensor, Normalize, in torch."""
    pil = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return tensor.sub(mean).div(std)


@pytest.mark.parametrize("shape", [(480, 640), (100, 400), (224, 224), (31, 7)])
def test_matches_the_reference_transform_exactly(shape: tuple[int, int]) -> None:
    image = _photo(*shape)
    out = preprocess_image(image)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _torchvision_like(image, 224).numpy())


def test_resize_is_antialiased_bicubic() -> None:
    # torch's antialiased bicubic implements PIL's kernel independently; a plain (OpenCV-style)
    # bicubic or bilinear resize would be off by several grey levels on a 640x480 frame.
    image = _photo(480, 640, seed=3)
    ours = preprocess_image(image).transpose(1, 2, 0) * STD + MEAN
    src = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(src, (224, 224), mode="bicubic", antialias=True)
    ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).numpy() / 255
    assert np.abs(ours - ref).max() <= 1.01 / 255
    assert np.abs(ours - ref).mean() < 0.3 / 255


def test_aspect_ratio_is_not_kept() -> None:
    # Left quarter red, rest blue, in a wide image: the squash keeps the quarter split.
    image = np.zeros((100, 400, 3), np.uint8)
    image[:, :100, 0] = 255
    image[:, 100:, 2] = 255
    pixels = preprocess_image(image).transpose(1, 2, 0) * STD + MEAN
    assert np.allclose(pixels[:, :50], (1, 0, 0), atol=1e-5)
    assert np.allclose(pixels[:, 62:], (0, 0, 1), atol=1e-5)


def test_constant_image_and_channel_order() -> None:
    image = np.empty((50, 70, 3), np.uint8)
    image[...] = (255, 128, 0)
    out = preprocess_image(image)
    expected = (np.array([255, 128, 0], np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(out[:, 10, 20], expected, rtol=1e-6)
    np.testing.assert_allclose(out.reshape(3, -1).std(axis=1), 0, atol=1e-6)


def test_non_contiguous_views_are_accepted() -> None:
    bgr = _photo(120, 90, seed=5)
    rgb_view = bgr[:, :, ::-1]
    np.testing.assert_array_equal(
        preprocess_image(rgb_view), preprocess_image(np.ascontiguousarray(rgb_view))
    )


def test_size_and_normalisation_are_parameters() -> None:
    config = PreprocessConfig(image_size=112, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = preprocess_image(np.full((40, 60, 3), 255, np.uint8), config)
    assert out.shape == (3, 112, 112)
    np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 1), np.uint8), "HxWx3"),
        (np.zeros((2, 10, 10, 3), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 3), np.uint16), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 0, 3), np.uint8), "empty"),
        ([[[0, 0, 0]]], "numpy"),
    ],
)
def test_bad_inputs_raise_clear_errors(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess_image(image)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 0}, {"mean": (0.5, 0.5)}, {"std": (0.5, 0.0, 0.5)}]
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**kwargs)


def test_batches() -> None:
    images = [_photo(48, 64, seed=i) for i in range(3)]
    batch = preprocess_batch(images)
    assert batch.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], preprocess_image(images[1]))
    tensor = preprocess_batch_torch(images)
    assert tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), batch)
    half = preprocess_batch_torch(images, dtype=torch.float16, device="cpu")
    assert half.dtype == torch.float16 and half.shape == (3, 3, 224, 224)
    with pytest.raises(ValueError):
        preprocess_batch([])
