"""The pipeline end to end on loaded weights (no training): atomic writes, parity, TensorRT and quality
gates, full ResNet-50. Random small weights are a model far below its quality bar (top-1 near chance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from contract import model_config
from contract.names import BELOW_THRESHOLD_PARAMETER
from export import onnx as onnx_export
from export import tensorrt
from export.__main__ import EXIT_FAILED, main
from export.families import get_family
from export.families.base import ParityCheck, ParityError, QualityError
from export.families.classifier import TOP1_THRESHOLD
from export.pipeline import build_repository


def _small_weights(family: str, path: Path) -> Path:
    chosen = get_family(family)
    torch.manual_seed(0)
    torch.save(chosen.build(chosen.configs["small"]).state_dict(), path)
    return path


def test_a_graph_failing_parity_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _small_weights("resnet", tmp_path / "resnet.pt")
    out = tmp_path / "repo"
    build_repository(out, families=["resnet"], weights={"resnet": weights}, allow_below_threshold=True)
    before = (out / "resnet_small" / "1" / "model.onnx").read_bytes()

    def failing(graph, session):
        return (ParityCheck("real/logits", 1.0, False, "atol=0.0001 rtol=0"),)

    monkeypatch.setattr(onnx_export, "graph_parity", failing)
    with pytest.raises(ParityError, match="resnet_small: ONNX output differs from PyTorch"):
        build_repository(out, families=["resnet"], weights={"resnet": weights})
    assert sorted(p.name for p in out.iterdir()) == ["resnet_small"]  # no staging folder left behind
    assert (out / "resnet_small" / "1" / "model.onnx").read_bytes() == before  # the old model still stands


def test_cli_exits_1_when_parity_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _small_weights("alexnet", tmp_path / "alexnet.pt")
    monkeypatch.setattr(
        onnx_export, "graph_parity", lambda graph, session: (ParityCheck("random/logits", 0.5, False, "atol=0.0001"),)
    )
    code = main(["--families", "alexnet", "--weights", f"alexnet={weights}", "--out", str(tmp_path / "repo")])
    assert code == EXIT_FAILED
    assert "alexnet_small: ONNX output differs" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()  # nothing written: the --out folder it made is gone


def test_loaded_small_weights_export_in_worker_processes_with_a_dynamic_batch(tmp_path: Path) -> None:
    weights = {name: _small_weights(name, tmp_path / f"{name}.pt") for name in ("googlenet", "alexnet")}
    announced: list[str] = []
    results = build_repository(
        tmp_path / "repo",
        families=["googlenet", "alexnet"],
        weights=weights,
        seed=3,
        jobs=2,
        on_model=announced.append,
        allow_below_threshold=True,
    )
    # family order, whatever finished first; AlexNet's DeconvNet graph follows its classifier
    assert [r.name for r in results] == ["googlenet_small", "alexnet_small", "alexnet_small_explain"]
    assert sorted(r.name for r in announced) == ["alexnet_small", "alexnet_small_explain", "googlenet_small"]
    googlenet = results[0]
    assert googlenet.parity_passed and googlenet.quality is not None  # measured even for loaded weights
    report = json.loads((googlenet.path / "1" / "export_report.json").read_text())
    assert report["weights"] == str(weights["googlenet"]) and report["seed"] == 3 and report["opset"] >= 17
    session = onnx_export.open_session(googlenet.path / "1" / "model.onnx")
    for batch in (1, 5):
        (logits,) = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 8)


def test_a_model_below_its_quality_bar_is_not_written_and_the_cli_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _small_weights("resnet", tmp_path / "resnet.pt")
    out = tmp_path / "repo"
    code = main(["--families", "resnet", "--weights", f"resnet={weights}", "--out", str(out)])
    assert code == EXIT_FAILED
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("ninefold export: resnet (resnet_small) is below its quality bar: top1 0.")
    assert f"< {TOP1_THRESHOLD}" in message and "--allow-below-threshold" in message
    assert not out.exists()  # nothing written: the --out folder it made is gone


def test_allow_below_threshold_writes_the_model_stamped_in_report_and_config(tmp_path: Path) -> None:
    weights = _small_weights("resnet", tmp_path / "resnet.pt")
    (result,) = build_repository(
        tmp_path / "repo", families=["resnet"], weights={"resnet": weights}, allow_below_threshold=True
    )
    assert result.quality is not None and not result.quality.passed
    misses = result.quality.misses()  # top-1 and the 10-crop top-1: random weights miss both
    assert [miss.split()[0] for miss in misses] == ["top1", "top1_10_crops"]
    report = json.loads((result.path / "1" / "export_report.json").read_text())
    assert report["below_threshold"] == list(misses) and not report["quality"]["passed"]
    config = model_config.read(result.path)
    assert model_config.parameters(config)[BELOW_THRESHOLD_PARAMETER] == "; ".join(misses)


def test_every_family_below_its_bar_is_named_not_only_the_first(tmp_path: Path) -> None:
    weights = {name: _small_weights(name, tmp_path / f"{name}.pt") for name in ("alexnet", "googlenet")}
    with pytest.raises(QualityError) as raised:
        build_repository(tmp_path / "repo", families=["alexnet", "googlenet"], weights=weights, jobs=1)
    assert "alexnet (alexnet_small)" in str(raised.value) and "googlenet (googlenet_small)" in str(raised.value)
    assert list((tmp_path / "repo").iterdir()) == []


def test_a_tensorrt_engine_that_differs_from_onnx_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: the engine build and run are replaced by a plan file and outputs off by 1.0 (an
    engine far outside the fp16 tolerance); the pipeline's own checks and staging are real."""
    weights = _small_weights("resnet", tmp_path / "resnet.pt")
    monkeypatch.setattr(tensorrt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt, "compute_capability", lambda: (9, 0))
    monkeypatch.setattr(tensorrt, "build_engine", lambda onnx_path, plan, profile: plan.write_bytes(b"plan"))

    def engine_off_by_one(plan: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = onnx_export.open_session(plan.with_name("model.onnx"))
        return {name: value + 1.0 for name, value in onnx_export.run_session(session, inputs).items()}

    monkeypatch.setattr(tensorrt, "run_engine", engine_off_by_one)
    out = tmp_path / "repo"
    with pytest.raises(ParityError, match="resnet_small: the TensorRT engine's output differs from ONNX Runtime"):
        build_repository(
            out, families=["resnet"], weights={"resnet": weights}, build_tensorrt=True, allow_below_threshold=True
        )
    assert list(out.iterdir()) == []
    monkeypatch.setattr(
        tensorrt,
        "run_engine",
        lambda plan, inputs: onnx_export.run_session(onnx_export.open_session(plan.with_name("model.onnx")), inputs),
    )
    (result,) = build_repository(
        out, families=["resnet"], weights={"resnet": weights}, build_tensorrt=True, allow_below_threshold=True
    )
    assert (result.path / "1" / "model.sm90.plan").read_bytes() == b"plan"  # an agreeing engine is written


@pytest.mark.slow
def test_full_resnet50_exports_from_a_torchvision_checkpoint_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    (result,) = build_repository(tmp_path / "repo", families=["resnet"], config="full", weights={"resnet": weights})
    assert result.name == "resnet_full" and result.parity_passed and result.quality is None
    runtime = [check for check in result.parity if not check.name.startswith("reference/")]
    assert {check.name for check in runtime} == {"real/logits", "random/logits"}
    assert all(check.max_abs_diff <= 1e-4 for check in runtime)
    # the reference agreement on drawn photos (torchvision's transforms + PyTorch): 20 photos + the top-5 tally
    assert len(result.parity) - len(runtime) == 21 and all(check.passed for check in result.parity)
    config = model_config.read(result.path)
    assert list(config.input[0].dims) == [3, 224, 224] and list(config.output[0].dims) == [1000]
    assert len((result.path / "labels.txt").read_text().splitlines()) == 1000
