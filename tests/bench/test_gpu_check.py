"""scripts/gpu_check.sh on a CPU machine: it runs in one go, benches the CPU and reports every GPU part skipped.

Figures are not asserted (noisy machine); on a GPU host run the script itself (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnxruntime
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_reports_gpu_parts_skipped_on_a_cpu_machine(small_repository: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a GPU build of onnxruntime: run scripts/gpu_check.sh itself")
    command = [str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out"), "--quick"]
    done = subprocess.run(
        [*command, "--repository", str(small_repository)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    gpu_steps = ["gpu tests (pytest -m gpu)", "resnet50 fp32", "resnet50 fp16", "GPU utilisation (NVML)"]
    assert all(summary["steps"][step].startswith("skipped (no GPU") for step in gpu_steps), summary["steps"]
    assert summary["steps"]["serve + bench (ninefold cpu)"] == "ok"
    points = [(p["model"], p["load"], p["gpu_utilization_percent"]) for p in summary["points"]]
    assert points == [("resnet_small", 1.0, None), ("resnet_small", 16.0, None)]
    assert all(p["median"]["completed"] > 0 and p["server_cpu_us_per_request"] for p in summary["points"])
    assert "| ninefold cpu | resnet_small | 16 |" in (tmp_path / "out" / "gpu_check.md").read_text()
