"""Backends: one runtime session pinned to one device, behind a small protocol.

A backend knows nothing of gRPC or batching. `open_backend` picks the implementation for a
model file and a device (`select_backend` is the pure rule, unit-tested without a GPU).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from contract.names import ONNX_PLATFORM
from contract.tensors import TensorSpec
from serving.placement import Device


class Backend(Protocol):
    """A loaded model on one device.

    `inputs`/`outputs` are what the model file declares, batch axis included (-1 = dynamic).
    `infer` takes and returns arrays keyed by tensor name; it is called from one thread at a time
    (the instance's worker thread) and should release the GIL while computing.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendSettings:
    """Runtime knobs from the server configuration.

    intra_op_threads: ONNX Runtime threads per CPU instance; 0 = cores / CPU instances of the model.
    spin_wait: let ONNX Runtime's pool threads spin between runs (lower latency, burns a core).
    tensorrt_cache_dir: where the TensorRT EP keeps built engines (None = next to the model file).
    tensorrt_fp16: allow fp16 kernels in TensorRT (EP and nothing else; .plan engines are fixed).
    fixed_shapes: which ONNX Runtime instances run only the batch ladder's sizes (serving.ladder):
      "gpu" (GPU instances), "all" (CPU ones too) or "off".
    io_binding: which fixed-shape instances run each rung through an IOBinding of pre-allocated
      buffers (serving.backends.io_binding): "gpu", "all" or "off", as fixed_shapes.
    """

    intra_op_threads: int = 0
    spin_wait: bool = False
    tensorrt_cache_dir: Path | None = None
    tensorrt_fp16: bool = True
    fixed_shapes: str = "gpu"
    io_binding: str = "gpu"


FIXED_SHAPES_MODES = ("gpu", "all", "off")
IO_BINDING_MODES = FIXED_SHAPES_MODES


@dataclass(frozen=True)
class BackendChoice:
    """Which implementation opens which file of a version folder."""

    runtime: str  # "onnxruntime" or "tensorrt"
    filename: str


ONNX_PLATFORMS = (ONNX_PLATFORM, "onnxruntime")
TENSORRT_PLATFORMS = ("tensorrt_plan", "tensorrt")


def select_backend(
    platform: str, default_filename: str, files: Iterable[str], device: Device, tensorrt_installed: bool
) -> BackendChoice:
    """Choose the runtime and file for one instance.

    `platform` is config.pbtxt's platform or backend. An ONNX model on a GPU whose architecture has a
    native engine (`model.<arch>.plan`, written by the export stage) runs that engine when TensorRT is
    installed; otherwise ONNX Runtime runs the ONNX file (with the TensorRT/CUDA EPs on a GPU).
    A tensorrt_plan model needs a GPU. Raises ValueError naming what is missing.
    """
    names = set(files)
    if platform in TENSORRT_PLATFORMS:
        if not device.is_gpu:
            raise ValueError("a tensorrt_plan model needs a GPU instance (KIND_GPU)")
        if not tensorrt_installed:
            raise ValueError("a tensorrt_plan model needs the `tensorrt` package (`gpu` extra)")
        engine = engine_file_for(names, device.gpu.arch, default_filename or "model.plan")  # type: ignore[union-attr]
        if engine is None:
            raise ValueError(f"no TensorRT engine for {device.gpu.arch}: expected model.{device.gpu.arch}.plan")  # type: ignore[union-attr]
        return BackendChoice("tensorrt", engine)
    if platform not in ONNX_PLATFORMS:
        raise ValueError(
            f"platform/backend '{platform}' is not supported; use onnxruntime_onnx or tensorrt_plan"
        )
    onnx_file = default_filename or "model.onnx"
    if device.is_gpu and tensorrt_installed:
        engine = engine_file_for(names, device.gpu.arch, None)  # type: ignore[union-attr]
        if engine is not None:
            return BackendChoice("tensorrt", engine)
    if onnx_file not in names:
        raise ValueError(f"model file '{onnx_file}' is missing from the version folder")
    return BackendChoice("onnxruntime", onnx_file)


def engine_file_for(files: Iterable[str], arch: str, fallback: str | None) -> str | None:
    """The engine built for `arch` ("sm90" -> model.sm90.plan), else `fallback` when present."""
    names = set(files)
    specific = f"model.{arch}.plan"
    if specific in names:
        return specific
    return fallback if fallback is not None and fallback in names else None


def tensorrt_installed() -> bool:
    """Whether the TensorRT Python package can be imported (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


#: The TensorRT library ONNX Runtime's TensorRT EP links (onnxruntime-gpu 1.31: TensorRT 10).
NVINFER = "libnvinfer.so.10"


@functools.cache
def tensorrt_loadable() -> bool:
    """Whether TensorRT's library can be loaded in this process, so that asking ONNX Runtime for its
    TensorRT EP cannot fail. The GPU wheel lists that EP whether TensorRT exists or not; a pip-installed
    TensorRT is found by importing its Python package, which loads the library from its wheel."""
    try:
        ctypes.CDLL(NVINFER)
        return True
    except OSError:
        pass
    if not tensorrt_installed():
        return False
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401  # loads libnvinfer from its wheel
    except Exception:
        return False
    try:
        ctypes.CDLL(NVINFER)  # already in the process: found by its soname
    except OSError:
        return False
    return True


def open_backend(
    choice: BackendChoice,
    path: Path,
    device: Device,
    settings: BackendSettings,
    threads: int,
    ladder: Sequence[int] = (),
    content: bytes | None = None,
) -> Backend:
    """Load `path` (or `content`, its bytes already read) with the chosen runtime on `device`. Imports the
    runtime lazily.

    With a `ladder` (and serving.backends.fixed_shapes.runs_fixed_shapes saying so) the instance is one
    session per batch size of the ladder, each bound to pre-allocated buffers where
    serving.backends.io_binding.runs_io_binding says so.
    """
    if choice.runtime == "tensorrt":
        from serving.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(path, device, content)
    from serving.backends.fixed_shapes import open_fixed_shapes, runs_fixed_shapes
    from serving.backends.io_binding import bound_rung, runs_io_binding
    from serving.backends.onnxruntime import OnnxRuntimeBackend

    def open_one() -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(path, device, settings, threads, content)

    if ladder and runs_fixed_shapes(settings, device, choice.runtime):
        if runs_io_binding(settings, device):
            return open_fixed_shapes(ladder, lambda rows: bound_rung(open_one(), rows, device))
        return open_fixed_shapes(ladder, lambda rows: open_one())
    return open_one()
