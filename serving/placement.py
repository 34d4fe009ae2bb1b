"""Where instances run: `instance_group` -> one Placement per instance, and GPU discovery.

Pure functions over an explicit GPU list, so the placement rules are unit-tested on a machine
without GPUs (tests pass fake `Gpu` lists). `discover_gpus` is the only seam that touches
hardware: NVML when `nvidia-ml-py` is installed, else no GPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protos.inference import model_config_pb2 as mc

log = logging.getLogger(__name__)


class PlacementError(ValueError):
    """instance_group asks for devices this machine does not have."""


@dataclass(frozen=True)
class Gpu:
    """One visible GPU. `index` is the CUDA device ordinal the runtimes use."""

    index: int
    uuid: str
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int = 0

    @property
    def arch(self) -> str:
        """TensorRT engine tag of this GPU's architecture, e.g. "sm90" for an H100."""
        major, minor = self.compute_capability
        return f"sm{major}{minor}"


@dataclass(frozen=True)
class Device:
    """A CPU (gpu is None) or one GPU."""

    gpu: Gpu | None = None

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def label(self) -> str:
        """"cpu" or "gpu<index>" (used in logs, instance names and metrics)."""
        return "cpu" if self.gpu is None else f"gpu{self.gpu.index}"


CPU = Device()


@dataclass(frozen=True)
class Placement:
    """One model instance: its group's name, its device, and its index among the model's instances."""

    group: str
    device: Device
    index: int


def place(
    model_name: str,
    groups: Sequence[mc.ModelInstanceGroup],
    gpus: Sequence[Gpu],
    gpu_capable: bool,
) -> list[Placement]:
    """Expand `instance_group` into placements, Triton's way.

    No group = one instance per GPU when there are GPUs (and the runtime can use them), else
    one CPU instance. KIND_AUTO/KIND_MODEL: GPUs when every listed GPU (or any GPU when none is
    listed) exists and `gpu_capable`, else `count` CPU instances. KIND_GPU: `count` instances on
    each listed GPU (all GPUs when none listed); raises PlacementError when one is missing.
    KIND_CPU: `count` CPU instances. `count` 0 means 1.
    """
    by_index = {gpu.index: gpu for gpu in gpus}
    placements: list[Placement] = []
    for group_number, group in enumerate(groups or [mc.ModelInstanceGroup()]):
        name = group.name or f"{model_name}_{group_number}"
        count = group.count or 1
        if count < 0:
            raise PlacementError(f"instance_group '{name}': count must be >= 0, got {count}")
        wanted = list(group.gpus)
        devices: list[Device]
        if group.kind == mc.ModelInstanceGroup.KIND_CPU:
            if wanted:
                raise PlacementError(f"instance_group '{name}': KIND_CPU cannot list gpus")
            devices = [CPU]
        elif group.kind == mc.ModelInstanceGroup.KIND_GPU:
            if not gpu_capable:
                raise PlacementError(
                    f"instance_group '{name}' asks for KIND_GPU but this runtime has no GPU support "
                    "(install the `gpu` extra) ; use KIND_AUTO to fall back to the CPU"
                )
            devices = [Device(gpu) for gpu in _listed(name, wanted, by_index, gpus, required=True)]
        else:  # KIND_AUTO, KIND_MODEL
            listed = _listed(name, wanted, by_index, gpus, required=False) if gpu_capable else []
            devices = [Device(gpu) for gpu in listed] or [CPU]
        for device in devices:
            for _ in range(count):
                placements.append(Placement(name, device, len(placements)))
    return placements


def _listed(
    name: str, wanted: list[int], by_index: Mapping[int, Gpu], gpus: Sequence[Gpu], required: bool
) -> list[Gpu]:
    if not wanted:
        if required and not gpus:
            raise PlacementError(f"instance_group '{name}' asks for KIND_GPU but no GPU is visible")
        return list(gpus)
    missing = [index for index in wanted if index not in by_index]
    if missing:
        if required:
            raise PlacementError(
                f"instance_group '{name}' lists gpus {missing} that are not visible "
                f"(visible: {sorted(by_index) or 'none'})"
            )
        return []
    return [by_index[index] for index in wanted]


def discover_gpus(environ: Mapping[str, str] = os.environ) -> tuple[Gpu, ...]:
    """The GPUs this process may use: NVML's list, filtered by CUDA_VISIBLE_DEVICES.

    Returns () when NVML is not installed or finds no driver (a CPU machine). CUDA renumbers
    visible devices from 0 in CUDA_VISIBLE_DEVICES order; so do we.
    """
    try:
        import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py, `gpu` extra only
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("no GPUs: NVML did not initialise (%s)", error)
        return ()
    found = []
    for nvml_index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        found.append(
            Gpu(
                index=nvml_index,
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),  # type: ignore[arg-type]
                memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            )
        )
    return visible_gpus(found, environ.get("CUDA_VISIBLE_DEVICES"))


def visible_gpus(found: Sequence[Gpu], cuda_visible_devices: str | None) -> tuple[Gpu, ...]:
    """Apply CUDA_VISIBLE_DEVICES (indices or UUIDs, comma separated) and renumber from 0."""
    if cuda_visible_devices is None:
        return tuple(found)
    chosen = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        if not token:
            continue
        match = [g for g in found if g.uuid == token or g.uuid.startswith(token)] if not token.isdigit() else [
            g for g in found if g.index == int(token)
        ]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.append(match[0])
    return tuple(
        Gpu(i, gpu.uuid, gpu.name, gpu.compute_capability, gpu.memory_total_bytes) for i, gpu in enumerate(chosen)
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
