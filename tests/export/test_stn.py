"""Spatial transformer family: identity start, warp contract, inverse thetas, checkpoint loading."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from contract.scenes import affine_sample
from export.families import get_family
from export.families.base import WeightsError
from export.families.stn import FULL, SMALL, SpatialTransformerNet, distorted_set, to_pixels, train_stn

TINY = replace(SMALL, image_size=16, loc_widths=(4,), loc_hidden=8, head_widths=(4,), train_steps=2, batch_size=4)


@pytest.mark.parametrize("config", [SMALL, FULL], ids=["small", "full"])
def test_untrained_net_starts_at_the_identity_warp(config) -> None:
    model = SpatialTransformerNet(config).eval()
    images = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        warped, theta, logits = model(images)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    assert torch.allclose(warped, images, atol=1e-3)  # float rounding of the grid only
    assert logits.shape == (2, 8)


def test_known_inverse_theta_undoes_the_scene_distortion() -> None:
    data = distorted_set(4, 32, seed=3)
    for index in range(4):
        distorted = ((data.images[index] * 0.25 + 0.5) * 255).permute(1, 2, 0).numpy()
        restored = affine_sample(distorted, data.inverse_theta[index].numpy())
        inside = affine_sample(np.ones_like(distorted), data.inverse_theta[index].numpy()) > 0.999
        canonical = data.canonical[index].astype(np.float32)
        before = np.abs(distorted - canonical).mean()
        assert np.abs(restored - canonical)[inside].mean() < 0.5 * before


def test_smoke_training_moves_theta_and_returns_eval_mode() -> None:
    torch.manual_seed(0)
    model = SpatialTransformerNet(TINY)
    before = model.to_theta.weight.clone()
    trained = train_stn(model, replace(TINY, train_scenes=8), seed=0)
    assert not trained.training
    assert not torch.equal(before, trained.to_theta.weight)


def test_full_checkpoint_round_trips_and_mismatch_is_refused(tmp_path: Path) -> None:
    family = get_family("stn")
    source = family.build(FULL)
    path = tmp_path / "stn.pth"
    torch.save(source.state_dict(), path)
    loaded = family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))
    images = torch.randn(1, 3, FULL.image_size, FULL.image_size)
    with torch.no_grad():
        assert torch.equal(loaded(images)[2], source.eval()(images)[2])
    torch.save(family.build(SMALL).state_dict(), path)
    with pytest.raises(WeightsError, match="weights do not fit stn_full: .*shape mismatches"):
        family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))


def test_written_out_grid_generator_equals_affine_grid() -> None:
    model = SpatialTransformerNet(TINY).eval()
    theta = torch.tensor([[[0.9, -0.3, 0.1], [0.25, 1.1, -0.2]]])
    expected = torch.nn.functional.affine_grid(theta, [1, 3, 16, 16], align_corners=False)
    assert torch.allclose((model.base_grid.view(1, -1, 3) @ theta.transpose(1, 2)).view(1, 16, 16, 2), expected)


def test_exported_stn_report_meets_both_quality_bars_and_parity(small_repository: Path) -> None:
    report = json.loads((small_repository / "stn_small" / "1" / "export_report.json").read_text())
    assert report["task"] == "warp" and report["opset"] >= 17
    assert report["parity"]["passed"]
    assert max(check["max_abs_diff"] for check in report["parity"]["checks"]) <= 1e-4
    quality = report["quality"]
    assert quality["passed"] and quality["details"]["accuracy_distorted"] >= 0.95
    assert quality["details"]["pixel_error_reduction"] >= 0.30


def test_exported_stn_warps_held_out_scenes_towards_their_canonical_pose(small_repository: Path) -> None:
    path = str(small_repository / "stn_small" / "1" / "model.onnx")
    onnx.checker.check_model(path)
    assert "GridSample" in {node.op_type for node in onnx.load(path).graph.node}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    data = distorted_set(96, SMALL.image_size, seed=777)  # 24 left the 0.9 bar to sampling luck
    outputs = [session.run(["warped", "theta", "logits"], {"images": data.images[i : i + 1].numpy()}) for i in range(4)]
    warped, theta, logits = session.run(["warped", "theta", "logits"], {"images": data.images.numpy()})
    assert np.allclose(np.concatenate([o[0] for o in outputs]), warped[:4], atol=1e-5)  # batch 1 == batch 96
    assert theta.shape == (96, 2, 3)
    assert (logits.argmax(axis=1) == data.labels.numpy()).mean() >= 0.9
    canonical = data.canonical.astype(np.float32)
    before = np.abs(to_pixels(data.images) - canonical).mean()
    after = np.abs(to_pixels(torch.from_numpy(warped)) - canonical).mean()
    assert after <= 0.8 * before
