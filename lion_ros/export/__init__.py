"""Deployment: ONNX export of the engine set, TensorRT engine builds and the engine directory.

    graphs.py   the four graphs as torch modules, with explicit precision plans
    onnx.py     export_onnx: the graphs to ONNX (external data above 2 GiB)
    quantize.py weight-only INT8 (int8 weights + DequantizeLinear) for the decoder step graph
    engines.py  the engine directory: metadata, checks before loading, safe (re)builds, TensorRT
    cli.py      lion-build-engines
"""
