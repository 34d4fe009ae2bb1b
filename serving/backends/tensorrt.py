"""Native TensorRT engines (`model.<arch>.plan`, built by the export stage for one GPU architecture).

Imports `tensorrt` and the CUDA runtime bindings (`cuda-python`) lazily, inside the backend, so a
CPU machine never needs them; `serving.backends.select_backend` only picks this backend on a GPU
whose architecture has an engine. Device buffers are allocated once for the engine's largest
profile shape and reused; each call copies inputs in, runs `execute_async_v3` on the instance's
own stream, and copies outputs out (all on the instance's worker thread, GIL released by TensorRT).

Written against TensorRT 10's tensor API; exercised only on a GPU (tests marked `gpu`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from contract.tensors import TensorSpec, config_type_of
from serving.placement import Device


def _cuda() -> Any:
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


class TensorRTBackend:
    """One deserialised engine + execution context + stream on one GPU."""

    def __init__(self, path: Path, device: Device, content: bytes | None = None) -> None:
        """`content`: the engine's bytes when the caller already read (and checked) `path`."""
        import tensorrt as trt  # type: ignore[import-not-found]

        if device.gpu is None:
            raise ValueError("a TensorRT engine needs a GPU instance")
        self._cudart = _cuda()
        _check(self._cudart.cudaSetDevice(device.gpu.index))
        self._device_index = device.gpu.index
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes() if content is None else content)
        if self._engine is None:
            raise ValueError(f"TensorRT could not deserialise {path.name} (built for another GPU or TensorRT?)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        inputs: list[tuple[TensorSpec, np.dtype, tuple[int, ...] | None]] = []
        outputs: list[tuple[TensorSpec, np.dtype, tuple[int, ...] | None]] = []
        self._buffers: dict[str, int] = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(self._engine.get_tensor_shape(name))
            largest = tuple(self._engine.get_tensor_profile_shape(name, 0)[2]) if is_input else None
            spec = TensorSpec(name, shape, config_type_of(dtype))
            (inputs if is_input else outputs).append((spec, dtype, largest))
        self.inputs = tuple(spec for spec, _, _ in inputs)
        self.outputs = tuple(spec for spec, _, _ in outputs)
        self._dtypes = {spec.name: dtype for spec, dtype, _ in inputs + outputs}
        for spec, _, largest in inputs:
            self._context.set_input_shape(spec.name, largest)
        for spec, dtype, largest in inputs + outputs:
            shape = largest if largest is not None else tuple(self._context.get_tensor_shape(spec.name))
            self._buffers[spec.name] = _check(self._cudart.cudaMalloc(int(np.prod(shape)) * dtype.itemsize))
            self._context.set_tensor_address(spec.name, self._buffers[spec.name])

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        _check(cudart.cudaSetDevice(self._device_index))
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for spec in self.inputs:
            array = np.ascontiguousarray(inputs[spec.name], dtype=self._dtypes[spec.name])
            self._context.set_input_shape(spec.name, array.shape)
            _check(cudart.cudaMemcpyAsync(self._buffers[spec.name], array.ctypes.data, array.nbytes, to_device,
                                          self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        results = {}
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.outputs:
            result = np.empty(tuple(self._context.get_tensor_shape(spec.name)), dtype=self._dtypes[spec.name])
            _check(cudart.cudaMemcpyAsync(result.ctypes.data, self._buffers[spec.name], result.nbytes, to_host,
                                          self._stream))
            results[spec.name] = result
        _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def close(self) -> None:
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine
