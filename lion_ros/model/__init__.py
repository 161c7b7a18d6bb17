"""The LION model in PyTorch: configuration, modules, checkpoints and decoding."""
from .config import LionConfig
from .generation import GenerationConfig, GenerationOutput, generate
from .lion import CheckpointMismatchError, ImageFeatures, LionModel, LionOutput, parameter_group

__all__ = [
    "CheckpointMismatchError",
    "GenerationConfig",
    "GenerationOutput",
    "ImageFeatures",
    "LionConfig",
    "LionModel",
    "LionOutput",
    "generate",
    "parameter_group",
]
