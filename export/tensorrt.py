"""TensorRT engines (GPU only): an fp16 engine per model with one optimisation profile for batch
1..max_batch_size, named per GPU architecture (``model.sm90.plan``), and its agreement with ONNX Runtime.

The shape logic (profiles, file names, agreement figures) is pure and runs anywhere; only
``build_engine`` and ``run_engine`` need TensorRT and a GPU, and they import them lazily. Engines run
in contract.tensorrt_runner, the runner the serving backend uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.tensorrt_runner import EngineRunner, cuda_runtime
from contract.tensors import TensorSpec
from export.families.base import ParityCheck

# fp16 engines: agreement with the fp32 ONNX graph is reported, judged against a looser bound.
FP16_TOLERANCE_ATOL = 2e-2
FP16_TOLERANCE_RTOL = 2e-2


@dataclass(frozen=True)
class ProfileShape:
    """min / opt / max shapes (batch axis included) of one input in a TensorRT optimisation profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimisation_profile(
    inputs: Sequence[TensorSpec], max_batch_size: int, example_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[ProfileShape, ...]:
    """One profile covering batch 1..max_batch_size, tuned for half of it (the larger preferred batch).

    Non-batch dims are fixed; a -1 (dynamic) dim takes its size from ``example_shapes`` (the parity
    inputs), because a profile needs concrete bounds.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    optimum = max(1, max_batch_size // 2)
    profile = []
    for spec in inputs:
        dims = tuple(example_shapes[spec.name][i + 1] if dim == -1 else dim for i, dim in enumerate(spec.shape))
        profile.append(ProfileShape(name=spec.name, min=(1, *dims), opt=(optimum, *dims), max=(max_batch_size, *dims)))
    return tuple(profile)


def engine_file_name(compute_capability: tuple[int, int]) -> str:
    """``model.sm<major><minor>.plan``: engines only run on the architecture they were built for."""
    major, minor = compute_capability
    return f"model.sm{major}{minor}.plan"


def agreement(name: str, reference: np.ndarray, engine: np.ndarray) -> ParityCheck:
    """fp16 engine output against the ONNX Runtime fp32 output, with FP16 tolerances."""
    if reference.shape != engine.shape:
        return ParityCheck(name, float("inf"), False, f"shape {engine.shape} != onnx {reference.shape}")
    difference = np.abs(engine.astype(np.float64) - reference.astype(np.float64))
    allowed = FP16_TOLERANCE_ATOL + FP16_TOLERANCE_RTOL * np.abs(reference.astype(np.float64))
    detail = f"fp16 vs onnx fp32, atol={FP16_TOLERANCE_ATOL:g} rtol={FP16_TOLERANCE_RTOL:g}"
    return ParityCheck(name, float(difference.max(initial=0.0)), bool(np.all(difference <= allowed)), detail)


def unavailable_reason() -> str | None:
    """Why engines cannot be built here (no TensorRT, no CUDA GPU), or None when they can."""
    try:
        import tensorrt  # noqa: F401

        cuda_runtime()
    except ImportError as error:
        return (
            f"TensorRT needs the tensorrt and cuda-python packages, and {error.name} is not installed "
            "(pip install 'ninefold[gpu]' on a machine with an NVIDIA GPU)"
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch; TensorRT engines are built on the GPU they will run on"
    return None


def compute_capability() -> tuple[int, int]:
    import torch

    return torch.cuda.get_device_capability(0)


def build_engine(onnx_path: Path, plan_path: Path, profile: Sequence[ProfileShape]) -> None:
    """Parse the ONNX graph and serialise an fp16 engine with ``profile`` to ``plan_path`` (GPU only)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for shape in profile:
        optimisation.set_shape(shape.name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(optimisation)
    serialised = builder.build_serialized_network(network, config)
    if serialised is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}")
    plan_path.write_bytes(bytes(serialised))


def run_engine(plan_path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a serialised engine once on named host inputs, with the runner the server uses (GPU 0 only)."""
    runner = EngineRunner(plan_path.read_bytes(), 0, plan_path.name)
    try:
        return runner.infer(inputs)
    finally:
        runner.close()
