"""The LION model in PyTorch: configuration, modules, checkpoints and decoding."""
from .config import LionConfig
from .generation import GenerationOutput, GenerationSettings, generate
from .lion import CheckpointMismatchError, ImageFeatures, LionModel, LionOutput, parameter_group

__all__ = [
    "CheckpointMismatchError",
    "GenerationOutput",
    "GenerationSettings",
    "ImageFeatures",
    "LionConfig",
    "LionModel",
    "LionOutput",
    "generate",
    "parameter_group",
]
