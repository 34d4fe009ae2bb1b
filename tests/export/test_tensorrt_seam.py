"""TensorRT seam: the shape logic runs on CPU; engines are built only on a GPU (marked, skipped here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import serving.backends.tensorrt
from contract.tensors import TensorSpec
from export import tensorrt
from protos.inference import model_config_pb2
from tests import fake_tensorrt


def test_profile_spans_batch_one_to_max_and_keeps_the_other_dims() -> None:
    profile = tensorrt.optimisation_profile((TensorSpec("images", (3, 32, 32)),), 32, {"images": (8, 3, 32, 32)})
    assert profile == (tensorrt.ProfileShape("images", (1, 3, 32, 32), (16, 3, 32, 32), (32, 3, 32, 32)),)


def test_profile_takes_dynamic_dims_from_the_example_and_covers_every_input() -> None:
    inputs = (TensorSpec("token", (1,), model_config_pb2.TYPE_INT64), TensorSpec("h", (-1,)))
    profile = tensorrt.optimisation_profile(inputs, 1, {"token": (2, 1), "h": (2, 48)})
    assert [(p.name, p.min, p.opt, p.max) for p in profile] == [
        ("token", (1, 1), (1, 1), (1, 1)),
        ("h", (1, 48), (1, 48), (1, 48)),
    ]


def test_profile_refuses_a_zero_batch() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        tensorrt.optimisation_profile((TensorSpec("images", (3, 8, 8)),), 0, {"images": (1, 3, 8, 8)})


@pytest.mark.parametrize(("capability", "name"), [((9, 0), "model.sm90.plan"), ((8, 6), "model.sm86.plan")])
def test_engine_file_is_named_per_gpu_architecture(capability: tuple[int, int], name: str) -> None:
    assert tensorrt.engine_file_name(capability) == name


def test_fp16_agreement_uses_the_loose_bound_and_catches_shape_errors() -> None:
    reference = np.array([[1.0, -2.0, 10.0]], dtype=np.float32)
    assert tensorrt.agreement("x", reference, reference + 0.01).passed
    assert not tensorrt.agreement("x", reference, reference + 1.0).passed
    assert not tensorrt.agreement("x", reference, reference[:, :2]).passed


def test_without_a_gpu_the_reason_is_plain() -> None:
    reason = tensorrt.unavailable_reason()
    if reason is not None:
        assert "TensorRT" in reason or "GPU" in reason


@pytest.mark.gpu
def test_engine_agrees_with_onnx_runtime_on_a_gpu(tmp_path: Path) -> None:
    if tensorrt.unavailable_reason() is not None:
        pytest.skip(tensorrt.unavailable_reason())
    import torch

    from export.families import get_family
    from export.pipeline import build_repository

    family = get_family("resnet")
    weights = tmp_path / "resnet_small.pt"
    torch.save(family.build(family.configs["small"]).state_dict(), weights)
    (result,) = build_repository(
        tmp_path / "repo", families=["resnet"], weights={"resnet": weights}, build_tensorrt=True
    )
    plan = result.path / "1" / tensorrt.engine_file_name(tensorrt.compute_capability())
    assert plan.is_file() and result.tensorrt and all(check.passed for check in result.tensorrt)


def test_the_export_check_runs_engines_with_the_servers_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT and CUDA are a fake here (tests/fake_tensorrt.py); the runner is the serving backend's."""
    assert tensorrt.EngineRunner is serving.backends.tensorrt.EngineRunner
    runtime = fake_tensorrt.install(monkeypatch)
    plan = tmp_path / "model.sm90.plan"
    plan.write_bytes(fake_tensorrt.FAKE_PLAN)
    x = np.linspace(-1, 1, 2 * fake_tensorrt.WIDTH, dtype=np.float32).reshape(2, -1)
    assert tensorrt.agreement("y", 2 * x + 1, tensorrt.run_engine(plan, {"x": x})["y"]).max_abs_diff == 0.0
    assert runtime.devices and not runtime.allocated  # one run, then the engine's buffers are freed
