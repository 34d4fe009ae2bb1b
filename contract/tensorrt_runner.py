"""The one TensorRT engine runner: the serving backend and the export's engine check both run engines here.

Imports `tensorrt` and the CUDA runtime bindings (`cuda-python`) lazily, when an engine is opened, so
that importing this module needs neither (nor torch). Device buffers are allocated once for the
engine's largest profile shape and reused; each call copies inputs in, runs `execute_async_v3` on the
runner's own stream, and copies outputs out (GIL released by TensorRT while it computes).

Written against TensorRT 10's tensor API; on a GPU only (tests run it against a small fake of both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def cuda_runtime() -> Any:
    """The CUDA runtime bindings of cuda-python (module path per version); ImportError when absent."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[import-not-found, no-redef]
    return runtime


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA call failed with error {int(error)}")
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class EngineTensor:
    """One input or output as the engine declares it: batch axis included, -1 = dynamic."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


class EngineRunner:
    """One deserialised engine + execution context + stream + device buffers on one GPU."""

    def __init__(self, plan: bytes, gpu_index: int, name: str = "engine") -> None:
        """`plan`: a serialised engine (`model.<arch>.plan`); `name` says which one in errors."""
        import tensorrt as trt  # type: ignore[import-not-found]

        self._cudart = cuda_runtime()
        _check(self._cudart.cudaSetDevice(gpu_index))
        self._gpu_index = gpu_index
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ValueError(f"TensorRT could not deserialise {name} (built for another GPU or TensorRT?)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        inputs: list[EngineTensor] = []
        outputs: list[EngineTensor] = []
        largest: dict[str, tuple[int, ...]] = {}
        for index in range(self._engine.num_io_tensors):
            tensor_name = self._engine.get_tensor_name(index)
            tensor = EngineTensor(
                tensor_name,
                np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor_name))),
                tuple(self._engine.get_tensor_shape(tensor_name)),
            )
            if self._engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                inputs.append(tensor)
                largest[tensor_name] = tuple(self._engine.get_tensor_profile_shape(tensor_name, 0)[2])
            else:
                outputs.append(tensor)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        for tensor in self.inputs:
            self._context.set_input_shape(tensor.name, largest[tensor.name])
        self._buffers: dict[str, int] = {}
        for tensor in self.inputs + self.outputs:
            shape = largest.get(tensor.name) or tuple(self._context.get_tensor_shape(tensor.name))
            self._buffers[tensor.name] = _check(self._cudart.cudaMalloc(int(np.prod(shape)) * tensor.dtype.itemsize))
            self._context.set_tensor_address(tensor.name, self._buffers[tensor.name])

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named host inputs (batch within the profile) -> named host outputs."""
        cudart = self._cudart
        _check(cudart.cudaSetDevice(self._gpu_index))
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for tensor in self.inputs:
            array = np.ascontiguousarray(inputs[tensor.name], dtype=tensor.dtype)
            if not self._context.set_input_shape(tensor.name, array.shape):  # also guards the buffers' size
                raise ValueError(f"input '{tensor.name}' of shape {array.shape} is outside the engine's profile")
            _check(
                cudart.cudaMemcpyAsync(
                    self._buffers[tensor.name], array.ctypes.data, array.nbytes, to_device, self._stream
                )
            )
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        results = {}
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for tensor in self.outputs:
            result = np.empty(tuple(self._context.get_tensor_shape(tensor.name)), dtype=tensor.dtype)
            _check(
                cudart.cudaMemcpyAsync(
                    result.ctypes.data, self._buffers[tensor.name], result.nbytes, to_host, self._stream
                )
            )
            results[tensor.name] = result
        _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def close(self) -> None:
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine
