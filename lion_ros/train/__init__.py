"""Stage-wise training of LION (paper stages 1-3, plus stage 0 pretraining for nano models)."""
from .config import TrainConfig
from .stages import TRAINABLE_GROUPS, VISUAL_INPUT, apply_freeze_policy, build_model, handover
from .trainer import TrainingModule, TrainResult, train

__all__ = [
    "TRAINABLE_GROUPS",
    "VISUAL_INPUT",
    "TrainConfig",
    "TrainResult",
    "TrainingModule",
    "apply_freeze_policy",
    "build_model",
    "handover",
    "train",
]
