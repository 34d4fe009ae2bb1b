#!/usr/bin/env python3
"""Build TensorRT engines for this pod's GPU into a shared cache, then lay out the repository the server reads.

Runs as the init container of a GPU pod, from the GPU serving image (tensorrt + nvidia-ml-py, no torch).
TensorRT engines only run on the GPU architecture and TensorRT version that built them, so the cache
is keyed by both:

    CACHE/<arch>-trt<version>/<model>/<version>/model.<arch>.plan     e.g. CACHE/sm90-trt10.16.1.11/...
    CACHE/<arch>-trt<version>/<model>/<version>/model.<arch>.failed   the build failed: not retried

The view the server is pointed at (NINEFOLD_MODEL_REPOSITORY) mirrors the read-only repository
with symlinks and adds each cached plan as `<version>/model.<arch>.plan`, the name the model
repository contract gives engines; the server runs such a plan natively. A graph TensorRT cannot
build alone stays on ONNX Runtime, whose TensorRT EP builds engines for the parts it can at load
time: `--ep-cache-link` points a symlink at CACHE/<arch>-trt<version>/onnxruntime for the server's
NINEFOLD_TENSORRT_CACHE_DIR, so those engines live under the same key.

A plan already in the cache, or already in the repository (`ninefold export --tensorrt`), is never
built again: a pod on a GPU model some pod has served before starts warm. Builds are written to a
temporary file and renamed, so two pods building at once both end with a whole engine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract import model_config
from contract.model_config import CONFIG_FILE
from contract.names import ONNX_PLATFORM


@dataclass(frozen=True)
class EngineJob:
    """One ONNX graph of the repository that wants an engine for this GPU."""

    model: str
    version: str
    onnx_path: Path
    max_batch_size: int  # 0 = the graph has no batch axis (Triton's convention)


@dataclass(frozen=True)
class CacheReport:
    """What one run did: engines built now, reused from the cache, and graphs TensorRT could not build."""

    built: tuple[str, ...]
    reused: tuple[str, ...]
    failed: tuple[str, ...]


EngineBuilder = Callable[[EngineJob, Path], None]


def cache_key(arch: str, tensorrt_version: str) -> str:
    """Folder name under the cache for one GPU architecture and TensorRT version, e.g. `sm90-trt10.16.1.11`."""
    return f"{arch}-trt{tensorrt_version}"


def find_engine_jobs(repository: Path) -> list[EngineJob]:
    """Every `<model>/<version>/model.onnx` of an ONNX model in the repository, in a stable order."""
    jobs = []
    for folder in sorted(path.parent for path in repository.glob(f"*/{CONFIG_FILE}")):
        try:
            config = model_config.read(folder)
        except model_config.ConfigSyntaxError as error:  # the server reports it when it loads the model
            print(f"engine cache: skipping {folder.name}: {CONFIG_FILE}: {error}", file=sys.stderr)
            continue
        if config.platform != ONNX_PLATFORM:
            continue
        for onnx_path in sorted(folder.glob("*/model.onnx")):
            if onnx_path.parent.name.isdigit():
                jobs.append(EngineJob(folder.name, onnx_path.parent.name, onnx_path, config.max_batch_size))
    return jobs


def fill_cache(repository: Path, cache: Path, arch: str, build: EngineBuilder) -> CacheReport:
    """Build the engines this GPU lacks into `cache` (already the keyed folder); reuse the rest."""
    built, reused, failed = [], [], []
    for job in find_engine_jobs(repository):
        name = f"{job.model}/{job.version}"
        plan = cache / job.model / job.version / f"model.{arch}.plan"
        failure_marker = plan.with_suffix(".failed")
        shipped = job.onnx_path.with_name(plan.name)
        if plan.exists() or shipped.exists():
            reused.append(name)
            continue
        if failure_marker.exists():
            failed.append(name)
            continue
        plan.parent.mkdir(parents=True, exist_ok=True)
        partial = plan.with_name(f".{plan.name}.{os.getpid()}.partial")
        try:
            build(job, partial)
        except Exception as error:  # noqa: BLE001 - any builder failure leaves the model on ONNX Runtime
            partial.unlink(missing_ok=True)
            failure_marker.write_text(f"{type(error).__name__}: {error}\n")
            print(f"engine-cache: {name}: TensorRT could not build it ({error}); "
                  "it is served by ONNX Runtime instead", file=sys.stderr)
            failed.append(name)
            continue
        os.replace(partial, plan)
        built.append(name)
    return CacheReport(tuple(built), tuple(reused), tuple(failed))


def link_view(repository: Path, cache: Path, arch: str, view: Path) -> None:
    """Mirror `repository` into `view` with symlinks and add this GPU's cached plans beside each model.onnx."""
    for model_dir in sorted(path for path in repository.iterdir() if (path / CONFIG_FILE).is_file()):
        _link_tree(model_dir, view / model_dir.name)
        for plan in sorted((cache / model_dir.name).glob(f"*/model.{arch}.plan")):
            target = view / model_dir.name / plan.parent.name / plan.name
            if target.parent.is_dir() and not os.path.lexists(target):
                target.symlink_to(plan.resolve())


def link_ep_cache(keyed_cache: Path, link: Path) -> None:
    """Point `link` at the keyed folder where ONNX Runtime's TensorRT EP keeps its engines (made if absent)."""
    target = keyed_cache / "onnxruntime"
    target.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve())


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir():
            _link_tree(entry, destination)
        elif not os.path.lexists(destination):
            destination.symlink_to(entry.resolve())


def detect_gpu_arch(device_index: int = 0) -> str:
    """Compute capability of the GPU this pod was given, as TensorRT engine names use it (`sm90`)."""
    import pynvml  # nvidia-ml-py, in the gpu extra

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        pynvml.nvmlShutdown()
    return f"sm{major}{minor}"


def tensorrt_version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


def build_with_tensorrt(job: EngineJob, plan_path: Path) -> None:
    """Parse the ONNX graph and build a serialized engine with a batch profile 1..max_batch_size (FP16 where fast)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(job.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parser: {errors}")
    config = builder.create_builder_config()
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if job.max_batch_size > 0:
        profile = builder.create_optimization_profile()
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            shape = list(tensor.shape)[1:]
            if any(dim < 0 for dim in shape):
                raise RuntimeError(f"input {tensor.name} has dynamic dims past the batch axis: {tensor.shape}")
            largest = job.max_batch_size
            profile.set_shape(tensor.name, [1, *shape], [max(1, largest // 2), *shape], [largest, *shape])
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT returned no engine (see the builder log above)")
    plan_path.write_bytes(bytes(engine))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True, help="read-only repository (PVC)")
    parser.add_argument("--cache", type=Path, required=True, help="engine cache root (shared volume)")
    parser.add_argument("--view", type=Path, required=True, help="empty folder the server will read")
    parser.add_argument("--ep-cache-link", type=Path, default=None,
                        help="symlink to create for the server's TensorRT EP cache (NINEFOLD_TENSORRT_CACHE_DIR)")
    parser.add_argument("--arch", default=None, help="GPU architecture, e.g. sm90 (default: asked from NVML)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"engine-cache: model repository {args.model_repository} is not a folder", file=sys.stderr)
        return 2
    arch = args.arch or detect_gpu_arch()
    keyed_cache = args.cache / cache_key(arch, tensorrt_version())
    report = fill_cache(args.model_repository, keyed_cache, arch, build_with_tensorrt)
    link_view(args.model_repository, keyed_cache, arch, args.view)
    if args.ep_cache_link is not None:
        link_ep_cache(keyed_cache, args.ep_cache_link)
    print(f"engine-cache: {keyed_cache.name}: built {len(report.built)}, reused {len(report.reused)}, "
          f"left to ONNX Runtime {len(report.failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
