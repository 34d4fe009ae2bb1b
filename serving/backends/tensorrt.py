"""Native TensorRT engines (`model.<arch>.plan`, built by the export stage for one GPU architecture).

The engine runs in contract.tensorrt_runner (the runner the export's engine check uses too), which
imports `tensorrt` and `cuda-python` only when an engine is opened, so a CPU machine never needs them;
`serving.backends.select_backend` only picks this backend on a GPU whose architecture has an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from contract.tensorrt_runner import EngineRunner, EngineTensor
from contract.tensors import TensorSpec, config_type_of
from serving.placement import Device


class TensorRTBackend:
    """An EngineRunner on the instance's GPU, declaring its tensors as the Backend protocol does."""

    def __init__(self, path: Path, device: Device, content: bytes | None = None) -> None:
        """`content`: the engine's bytes when the caller already read (and checked) `path`."""
        if device.gpu is None:
            raise ValueError("a TensorRT engine needs a GPU instance")
        self._runner = EngineRunner(path.read_bytes() if content is None else content, device.gpu.index, path.name)
        self.inputs = tuple(_spec(tensor) for tensor in self._runner.inputs)
        self.outputs = tuple(_spec(tensor) for tensor in self._runner.outputs)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.infer(inputs)

    def close(self) -> None:
        self._runner.close()


def _spec(tensor: EngineTensor) -> TensorSpec:
    return TensorSpec(tensor.name, tensor.shape, config_type_of(tensor.dtype))
