"""The pipeline end to end on loaded weights (no training): atomic writes, parity gate, full ResNet-50."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from export import onnx as onnx_export
from export.__main__ import EXIT_FAILED, main
from export.families import get_family
from export.families.base import ParityCheck, ParityError
from export.pipeline import build_repository


def _small_weights(family: str, path: Path) -> Path:
    chosen = get_family(family)
    torch.manual_seed(0)
    torch.save(chosen.build(chosen.configs["small"]).state_dict(), path)
    return path


def test_a_graph_failing_parity_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _small_weights("resnet", tmp_path / "resnet.pt")
    out = tmp_path / "repo"
    build_repository(out, families=["resnet"], weights={"resnet": weights})
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
    assert list((tmp_path / "repo").iterdir()) == []


def test_loaded_small_weights_export_in_worker_processes_with_a_dynamic_batch(tmp_path: Path) -> None:
    weights = {name: _small_weights(name, tmp_path / f"{name}.pt") for name in ("googlenet", "alexnet")}
    announced: list[str] = []
    results = build_repository(
        tmp_path / "repo", families=["googlenet", "alexnet"], weights=weights, seed=3, jobs=2, on_model=announced.append
    )
    assert [r.name for r in results] == ["googlenet_small", "alexnet_small"]  # family order, whatever finished first
    assert sorted(r.name for r in announced) == ["alexnet_small", "googlenet_small"]
    googlenet = results[0]
    assert googlenet.parity_passed and googlenet.quality is not None  # measured even for loaded weights
    report = json.loads((googlenet.path / "1" / "export_report.json").read_text())
    assert report["weights"] == str(weights["googlenet"]) and report["seed"] == 3 and report["opset"] >= 17
    session = onnx_export.open_session(googlenet.path / "1" / "model.onnx")
    for batch in (1, 5):
        (logits,) = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 8)


@pytest.mark.slow
def test_full_resnet50_exports_from_a_torchvision_checkpoint_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    (result,) = build_repository(tmp_path / "repo", families=["resnet"], config="full", weights={"resnet": weights})
    assert result.name == "resnet_full" and result.parity_passed and result.quality is None
    assert {check.name for check in result.parity} == {"real/logits", "random/logits"}
    assert all(check.max_abs_diff <= 1e-4 for check in result.parity)
    config = (result.path / "config.pbtxt").read_text()
    assert "dims: [ 3, 224, 224 ]" in config and "dims: [ 1000 ]" in config
    assert len((result.path / "labels.txt").read_text().splitlines()) == 1000
