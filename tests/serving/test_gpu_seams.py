"""The GPU seams against small fakes, as no GPU exists here: NVML (GPU discovery, GPU metrics), and
TensorRT + CUDA under the TensorRT backend (tests/fake_tensorrt.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc
from serving.backends.tensorrt import TensorRTBackend
from serving.metrics import GpuCollector
from serving.placement import Device, Gpu, discover_gpus
from tests import fake_tensorrt

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_tensorrt_backend_runs_its_engine_through_the_one_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT and CUDA are a fake here (tests/fake_tensorrt.py); the runner's buffers and copies are real."""
    runtime = fake_tensorrt.install(monkeypatch)
    plan = tmp_path / "model.sm90.plan"
    plan.write_bytes(fake_tensorrt.FAKE_PLAN)
    backend = TensorRTBackend(plan, Device(Gpu(1, "GPU-1", "NVIDIA H100", (9, 0))))
    assert backend.inputs == (TensorSpec("x", (-1, fake_tensorrt.WIDTH), mc.TYPE_FP32),)
    assert backend.outputs == (TensorSpec("y", (-1, fake_tensorrt.WIDTH), mc.TYPE_FP32),)
    for batch in (2, fake_tensorrt.MAX_BATCH):
        x = np.arange(batch * fake_tensorrt.WIDTH, dtype=np.float64).reshape(batch, -1)  # cast to the engine's FP32
        np.testing.assert_array_equal(backend.infer({"x": x})["y"], (2 * x + 1).astype(np.float32))
    assert set(runtime.devices) == {1} and runtime.allocated
    too_many = np.zeros((fake_tensorrt.MAX_BATCH + 1, fake_tensorrt.WIDTH), np.float32)
    with pytest.raises(ValueError, match=r"input 'x' of shape \(9, 3\) is outside the engine's profile"):
        backend.infer({"x": too_many})
    backend.close()
    assert not runtime.allocated  # every device buffer freed


def test_an_engine_tensorrt_cannot_deserialise_is_refused_by_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tensorrt.install(monkeypatch)
    plan = tmp_path / "model.sm80.plan"
    plan.write_bytes(b"an engine for another GPU")
    with pytest.raises(ValueError, match=r"could not deserialise model\.sm80\.plan"):
        TensorRTBackend(plan, Device(Gpu(0, "GPU-0", "NVIDIA A100", (8, 0))))


def test_the_runner_imports_without_tensorrt_cuda_or_torch() -> None:
    script = (
        "import sys, contract.tensorrt_runner, serving.backends.tensorrt\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
