"""A small fake of the TensorRT 10 and cuda-python calls contract.tensorrt_runner makes: no GPU exists here.

"Device memory" is host memory (ctypes buffers), so the runner's real copies run. The one engine the fake
deserialises (plan bytes FAKE_PLAN) has input `x` FP32 [-1, 3] (profile batch 1..MAX_BATCH) and output
`y` = 2 * x + 1, computed from the buffers at the addresses the runner bound.
"""

from __future__ import annotations

import ctypes
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

FAKE_PLAN = b"fake plan"
MAX_BATCH = 8
WIDTH = 3


class FakeCudaRuntime:
    """cuda-python's runtime module: calls return (error, value...) tuples; error 0 = success."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.allocated: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.devices: list[int] = []

    def cudaSetDevice(self, index: int) -> tuple[int]:
        self.devices.append(index)
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(size)
        self.allocated[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFree(self, pointer: int) -> tuple[int]:
        del self.allocated[pointer]
        return (0,)

    def cudaMemcpyAsync(self, destination: int, source: int, size: int, kind: int, stream: int) -> tuple[int]:
        device = destination if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else source
        if device not in self.allocated or size > len(self.allocated[device]):
            return (1,)  # cudaErrorInvalidValue
        ctypes.memmove(destination, source, size)
        return (0,)


class _Context:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        """False for a shape outside the profile, as TensorRT answers."""
        if not 1 <= shape[0] <= MAX_BATCH or tuple(shape[1:]) != (WIDTH,):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream: int) -> bool:
        count = int(np.prod(self.shapes["x"]))
        x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["x"]))
        y = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["y"]))
        y[:] = 2 * x + 1
        return True


class _Engine:
    num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return ("x", "y")[index]

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "x" else "output"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, WIDTH)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, WIDTH), (MAX_BATCH // 2, WIDTH), (MAX_BATCH, WIDTH)]

    def create_execution_context(self) -> _Context:
        return _Context()


def _tensorrt_module() -> ModuleType:
    module = ModuleType("tensorrt")

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
            return _Engine() if plan == FAKE_PLAN else None

    module.Logger = Logger  # type: ignore[attr-defined]
    module.Runtime = Runtime  # type: ignore[attr-defined]
    module.TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")  # type: ignore[attr-defined]
    module.nptype = lambda dtype: dtype  # type: ignore[attr-defined]
    return module


def install(monkeypatch: pytest.MonkeyPatch) -> FakeCudaRuntime:
    """Put the fake `tensorrt` and `cuda.bindings.runtime` in sys.modules; the runtime, to inspect."""
    runtime = FakeCudaRuntime()
    cuda, bindings = ModuleType("cuda"), ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module())
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)  # type: ignore[arg-type]
    return runtime
