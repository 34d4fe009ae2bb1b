"""The NVML seams (GPU discovery, GPU metrics) against a small fake NVML: no GPU exists here."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serving.metrics import GpuCollector
from serving.placement import discover_gpus


class FakeNvml:
    """The handful of pynvml calls ninefold makes, for two H100s."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100"

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 2**30, used=(handle + 1) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=25 * (handle + 1))


def test_discovery_reads_nvml_and_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    gpus = discover_gpus({})
    assert [(g.index, g.uuid, g.arch, g.memory_total_bytes) for g in gpus] == [
        (0, "GPU-0", "sm90", 80 * 2**30), (1, "GPU-1", "sm90", 80 * 2**30)
    ]
    assert [(g.index, g.uuid) for g in discover_gpus({"CUDA_VISIBLE_DEVICES": "1"})] == [(0, "GPU-1")]


def test_no_nvml_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert discover_gpus({}) == ()


def test_gpu_metrics_carry_triton_names_and_the_gpu_uuid() -> None:
    nvml = FakeNvml()
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml, [0, 1]))
    text = generate_latest(registry).decode()
    assert 'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5' in text
    assert 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-0"} 1.073741824e+09' in text
    assert 'nv_gpu_memory_total_bytes{gpu_uuid="GPU-1"} 8.589934592e+10' in text
