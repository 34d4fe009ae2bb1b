"""The export stage: PyTorch families -> ONNX (+ TensorRT) -> a Triton-layout model repository.

The Python API lives in ``export.pipeline`` (``build_repository``), the command line in ``export.__main__``.
The scenes it trains on, the names and config.pbtxt format it writes are the contract's (``contract``).
"""
