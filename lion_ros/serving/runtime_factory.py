"""Build the node's LionRuntime from its parameters (see lion_ros.runtime.backends)."""
from __future__ import annotations

from lion_ros.runtime.backends import BACKEND_CLASSES, load_runtime, runtime_class
from lion_ros.runtime.base import LionRuntime
from lion_ros.serving.parameters import NodeParams

__all__ = ["BACKEND_CLASSES", "RuntimeUnavailable", "make_runtime"]


class RuntimeUnavailable(RuntimeError):
    """The configured model or backend cannot be loaded; the message says what is missing."""


def make_runtime(params: NodeParams) -> LionRuntime:
    try:
        runtime_class(params.backend)
    except ValueError as exc:  # unknown name
        raise RuntimeUnavailable(str(exc)) from exc
    except ImportError as exc:
        raise RuntimeUnavailable(f"backend {params.backend!r} is not available here ({exc})") from exc
    model_path = params.resolved_model_path()
    if not model_path.is_dir():
        raise RuntimeUnavailable(f"model directory {model_path} does not exist (parameter model_path; "
                                 "empty = the shipped lion-nano, produced by the training scripts)")
    try:
        return load_runtime(params.backend, str(model_path), params.device, params.precision,
                            cuda_graphs=params.cuda_graphs)
    # ImportError: an optional dependency the backend needs at load (tensorrt, pycuda, a CUDA
    # execution provider) is missing on this machine.
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise RuntimeUnavailable(f"cannot load {model_path} with backend {params.backend}: {exc}") from exc
