"""Inference runtimes: PyTorch (reference), ONNX Runtime and TensorRT, behind one interface."""
from lion_ros.runtime.base import EncodedImage, GenerationSettings, LionRuntime, RequestCancelled

__all__ = ["EncodedImage", "GenerationSettings", "LionRuntime", "RequestCancelled"]
