"""The export stage: PyTorch families -> ONNX (+ TensorRT) -> a Triton-layout model repository.

This package file stays free of torch so that ``export.data.scenes`` (numpy + Pillow) can be imported by
the demo and the serving tests. The Python API lives in ``export.pipeline`` (``build_repository``), the
command line in ``export.__main__``.
"""
