"""Build the node's LionRuntime from its parameters; backends are imported only when chosen."""
from __future__ import annotations

import importlib
import inspect

from lion_ros.runtime.base import LionRuntime
from lion_ros.ros.params import NodeParams

# backend -> (module, class); every class offers from_pretrained(model_path, device=..., ...).
BACKEND_CLASSES = {
    "pytorch": ("lion_ros.runtime.pytorch", "PyTorchRuntime"),
    "onnxruntime": ("lion_ros.runtime.onnxruntime", "OnnxRuntimeRuntime"),
    "tensorrt": ("lion_ros.runtime.tensorrt", "TensorRTRuntime"),
}


class RuntimeUnavailable(RuntimeError):
    """The configured model or backend cannot be loaded; the message says what is missing."""


def make_runtime(params: NodeParams) -> LionRuntime:
    if params.backend not in BACKEND_CLASSES:
        raise RuntimeUnavailable(f"unknown backend {params.backend!r}; choose one of {', '.join(BACKEND_CLASSES)}")
    model_path = params.resolved_model_path()
    if not model_path.is_dir():
        raise RuntimeUnavailable(f"model directory {model_path} does not exist (parameter model_path; "
                                 "empty = the shipped lion-nano, produced by the training scripts)")
    module_name, class_name = BACKEND_CLASSES[params.backend]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeUnavailable(f"backend {params.backend!r} is not available here ({module_name}."
                                 f"{class_name}: {exc})") from exc
    # Backends name the precision argument differently (PyTorch: dtype policy; engines: precision).
    accepted = inspect.signature(cls.from_pretrained).parameters
    precision_arg = next((name for name in ("precision", "dtype") if name in accepted), None)
    kwargs = {precision_arg: params.precision} if precision_arg else {}
    try:
        return cls.from_pretrained(str(model_path), device=params.device, **kwargs)
    # ImportError: an optional dependency the backend needs at load (tensorrt, pycuda, a CUDA
    # execution provider) is missing on this machine.
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise RuntimeUnavailable(f"cannot load {model_path} with backend {params.backend}: {exc}") from exc
