"""Pick and load a runtime by backend name; each backend is imported only when chosen."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from lion_ros.runtime.base import LionRuntime

# backend -> (module, class); every class offers from_pretrained(path, device=..., ...).
BACKEND_CLASSES = {
    "pytorch": ("lion_ros.runtime.pytorch", "PyTorchRuntime"),
    "onnxruntime": ("lion_ros.runtime.onnxruntime", "OnnxRuntimeRuntime"),
    "tensorrt": ("lion_ros.runtime.tensorrt", "TensorRTRuntime"),
}
BACKENDS = tuple(BACKEND_CLASSES)
# Backends that run exported graphs (built by `lion-build-engines`) instead of the PyTorch model.
ENGINE_BACKENDS = tuple(name for name in BACKENDS if name != "pytorch")


def runtime_class(backend: str) -> type:
    """The runtime class of `backend`; ValueError for an unknown name, ImportError when the
    backend's module (or what it needs at import) is missing."""
    if backend not in BACKEND_CLASSES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CLASSES)}")
    module_name, class_name = BACKEND_CLASSES[backend]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except AttributeError as exc:
        raise ImportError(f"{module_name}.{class_name}: {exc}") from exc


def load_runtime(
    backend: str, path: str, device: str, precision: str | None = "auto", **options: Any
) -> LionRuntime:
    """`backend`'s runtime for a model or engine directory.

    The precision goes to the backend's own keyword (PyTorch: `dtype`, engines: `precision`;
    None there means the backend's own default);
    `options` a backend does not take (e.g. `cuda_graphs` for PyTorch) are left out, so one set
    of settings serves every backend."""
    cls = runtime_class(backend)
    accepted = inspect.signature(cls.from_pretrained).parameters
    kwargs = {name: value for name, value in options.items() if name in accepted}
    precision_arg = next((name for name in ("precision", "dtype") if name in accepted), None)
    if precision_arg:
        kwargs[precision_arg] = precision
    return cls.from_pretrained(path, device=device, **kwargs)
