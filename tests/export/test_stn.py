"""Spatial transformer family: identity start, the three grid generators, inverse thetas, checkpoints, gates."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from contract import warps
from contract.scenes import affine_sample
from export.families import get_family, stn
from export.families.base import WeightsError
from export.families.stn import (
    FULL,
    MAIN_ACCURACY_THRESHOLD,
    SMALL,
    SpatialTransformerNet,
    config_from_state_dict,
    distorted_set,
    to_pixels,
    train_stn,
    train_variant,
    variant_set,
)

TINY = replace(SMALL, image_size=16, loc_widths=(4,), loc_hidden=8, head_widths=(4,), train_steps=2, batch_size=4)
TRANSFORMS = ("affine", "projective", "tps")


@pytest.mark.parametrize(
    ("config", "transform"),
    [(SMALL, "affine"), (SMALL, "projective"), (SMALL, "tps"), (FULL, "tps")],
    ids=["small-affine", "small-projective", "small-tps", "full-tps"],
)
def test_untrained_net_starts_at_the_identity_warp(config, transform: str) -> None:
    model = SpatialTransformerNet(replace(config, transform=transform)).eval()
    images = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        warped, theta, logits = model(images)
    identity = {"affine": np.eye(3)[:2], "projective": np.eye(3), "tps": warps.control_grid(config.control_grid)}
    assert torch.allclose(theta, torch.tensor(identity[transform], dtype=torch.float32).expand_as(theta), atol=1e-6)
    assert torch.allclose(warped, images, atol=1e-3)  # float rounding of the grid only
    assert logits.shape == (2, 8)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_written_out_grid_generators_match_the_numpy_transforms(transform: str) -> None:
    """affine: torch's affine_grid; projective: the homography with its division; tps: Bookstein's spline,
    which passes exactly through the control points' sources."""
    sampler = SpatialTransformerNet(replace(TINY, transform=transform)).sampler
    rng = np.random.default_rng(1)
    theta = {
        "affine": np.array([[0.9, -0.3, 0.1], [0.25, 1.1, -0.2]]),
        "projective": warps.homography_from_corners(np.array([[-0.8, -1.1], [1.2, -0.9], [0.9, 1.0], [-1.1, 0.8]])),
        "tps": warps.control_grid(4) + rng.uniform(-0.2, 0.2, (16, 2)),
    }[transform]
    grid = sampler.grid(torch.tensor(theta[None], dtype=torch.float32))[0].numpy()
    assert np.allclose(grid, warps.source_grid(transform, theta, 16, 16), atol=1e-5)
    if transform == "affine":
        expected = torch.nn.functional.affine_grid(
            torch.tensor(theta[None]).float(), [1, 3, 16, 16], align_corners=False
        )
        assert np.allclose(grid, expected[0].numpy(), atol=1e-6)
    if transform == "tps":
        assert np.allclose(warps.tps_matrix(warps.control_grid(4), 4) @ theta, theta, atol=1e-9)


def test_known_inverse_theta_undoes_the_scene_distortion() -> None:
    data = distorted_set(4, 32, seed=3)
    for index in range(4):
        distorted = ((data.images[index] * 0.25 + 0.5) * 255).permute(1, 2, 0).numpy()
        restored = affine_sample(distorted, data.inverse_theta[index].numpy())
        inside = affine_sample(np.ones_like(distorted), data.inverse_theta[index].numpy()) > 0.999
        canonical = data.canonical[index].astype(np.float32)
        before = np.abs(distorted - canonical).mean()
        assert np.abs(restored - canonical)[inside].mean() < 0.5 * before


@pytest.mark.parametrize("transform", ["projective", "tps"])
def test_known_inverse_of_a_variant_distortion_undoes_it(transform: str) -> None:
    data = variant_set(transform, 4, 48, seed=3, split="validation", grid=4)
    for index in range(4):
        distorted = to_pixels(data.images[index : index + 1])[0]
        source = warps.source_grid(transform, data.inverse_theta[index].numpy().astype(np.float64), 48, 48)
        restored = warps.sample(distorted, source)
        inside = warps.sample(np.ones_like(distorted), source) > 0.999
        canonical = data.canonical[index].astype(np.float32)
        before = np.abs(distorted - canonical).mean()
        assert np.abs(restored - canonical)[inside].mean() < 0.5 * before


def test_smoke_training_moves_theta_and_variants_fine_tune_a_copy_of_the_head() -> None:
    torch.manual_seed(0)
    model = SpatialTransformerNet(TINY)
    before = model.to_theta.weight.clone()
    trained = train_stn(model, replace(TINY, train_scenes=8), seed=0)
    assert not trained.training
    assert not torch.equal(before, trained.to_theta.weight)
    main_head = {key: value.clone() for key, value in trained.classifier.state_dict().items()}
    variant = train_variant(trained, replace(TINY, variant_scenes=8, variant_steps=2), "tps", seed=0)
    assert variant.to_theta.out_features == 32 and not variant.training
    assert not torch.equal(variant.to_theta.weight, torch.zeros_like(variant.to_theta.weight))
    head = trained.classifier.state_dict()
    assert all(torch.equal(value, head[key]) for key, value in main_head.items())  # the affine net's head untouched
    assert not all(torch.equal(value, head[key]) for key, value in variant.classifier.state_dict().items())


def write_checkpoint(path: Path, config) -> SpatialTransformerNet:
    """A SpatialTransformerNet of `config` whose warp depends on the image, saved as a state_dict at `path`."""
    torch.manual_seed(5)
    source = SpatialTransformerNet(config).eval()
    with torch.no_grad():
        source.to_theta.weight.normal_(0, 0.02)
    torch.save(source.state_dict(), path)
    return source


def _checkpoint(tmp_path: Path, config) -> tuple[SpatialTransformerNet, dict[str, torch.Tensor]]:
    source = write_checkpoint(tmp_path / "stn.pth", config)
    return source, torch.load(tmp_path / "stn.pth", weights_only=True)


@pytest.mark.parametrize(
    "changes",
    [
        {"transform": "projective", "classes": 3, "image_size": 40},
        {"transform": "tps", "control_grid": 3, "classes": 0, "image_size": 24, "loc_widths": (4, 8)},
        {"transform": "affine", "classes": 8},
    ],
    ids=["projective-3-classes", "tps-headless", "affine"],
)
def test_full_checkpoint_architecture_is_read_from_its_shapes(tmp_path: Path, changes) -> None:
    config = replace(replace(FULL, loc_widths=(4, 8, 8), loc_hidden=16, head_widths=(4, 8)), **changes)
    source, state_dict = _checkpoint(tmp_path, config)
    found = config_from_state_dict(state_dict, FULL)
    for key, value in changes.items():
        assert getattr(found, key) == value
    loaded = get_family("stn").load(get_family("stn").build(FULL), FULL, state_dict)
    assert list(loaded) == [config.transform]
    images = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        for ours, theirs in zip(loaded[config.transform](images), source(images), strict=True):
            assert torch.equal(ours, theirs)


def test_checkpoint_of_no_known_transform_is_refused(tmp_path: Path) -> None:
    _, state_dict = _checkpoint(tmp_path, FULL)
    state_dict["to_theta.weight"] = torch.zeros(7, FULL.loc_hidden)
    with pytest.raises(WeightsError, match="to_theta has 7 outputs; 6 .affine., 8 .projective."):
        get_family("stn").load(get_family("stn").build(FULL), FULL, state_dict)
    del state_dict["localisation.2.weight"]
    with pytest.raises(WeightsError, match="no 'localisation.2.weight'"):
        get_family("stn").load(get_family("stn").build(FULL), FULL, state_dict)


def test_a_variant_that_does_not_undo_its_distortion_fails_its_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The projective net left at the identity: its pixel error reduction is 0, and the quality names it."""
    monkeypatch.setattr(stn, "EVAL_SCENES", 40)
    family = get_family("stn")
    config = replace(TINY, image_size=32, loc_widths=(4, 4))
    torch.manual_seed(0)
    nets = nn.ModuleDict({kind: SpatialTransformerNet(replace(config, transform=kind)) for kind in TRANSFORMS})
    quality = family.evaluate(nets, config, seed=0)
    assert not quality.passed
    misses = " ".join(quality.misses())
    assert "projective_pixel_error_reduction 0.000 < 0.3" in misses and "tps_pixel_error_reduction" in misses
    assert quality.details["variants"]["projective"]["pixel_error_reduction"] == pytest.approx(0.0, abs=1e-3)


def _report(repository: Path, model: str) -> dict:
    return json.loads((repository / model / "1" / "export_report.json").read_text())


@pytest.mark.parametrize("model", ["stn_small", "stn_small_projective", "stn_small_tps"])
def test_exported_stn_reports_meet_every_bar_and_parity(small_repository: Path, model: str) -> None:
    report = _report(small_repository, model)
    assert report["task"] == "warp" and report["opset"] >= 17
    assert report["parity"]["passed"]
    assert max(check["max_abs_diff"] for check in report["parity"]["checks"]) <= 1e-4
    quality = report["quality"]
    assert quality["passed"] and quality["details"]["accuracy_distorted"] >= MAIN_ACCURACY_THRESHOLD
    assert quality["details"]["pixel_error_reduction"] >= 0.30
    assert {gate["metric"] for gate in quality["gates"]} == {
        f"{kind}_{bar}" for kind in ("projective", "tps") for bar in ("distorted_accuracy", "pixel_error_reduction")
    }


@pytest.mark.parametrize(
    ("model", "transform", "theta_shape"),
    [
        ("stn_small", "affine", (2, 3)),
        ("stn_small_projective", "projective", (3, 3)),
        ("stn_small_tps", "tps", (16, 2)),
    ],
)
def test_exported_stn_warps_held_out_scenes_towards_their_canonical_pose(
    small_repository: Path, model: str, transform: str, theta_shape: tuple[int, int]
) -> None:
    path = str(small_repository / model / "1" / "model.onnx")
    onnx.checker.check_model(path)
    assert "GridSample" in {node.op_type for node in onnx.load(path).graph.node}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    data = variant_set(transform, 96, SMALL.image_size, seed=777, split="validation", grid=4)
    outputs = [session.run(["warped", "theta", "logits"], {"images": data.images[i : i + 1].numpy()}) for i in range(4)]
    warped, theta, logits = session.run(["warped", "theta", "logits"], {"images": data.images.numpy()})
    assert np.allclose(np.concatenate([o[0] for o in outputs]), warped[:4], atol=1e-5)  # batch 1 == batch 96
    assert theta.shape == (96, *theta_shape)
    assert (logits.argmax(axis=1) == data.labels.numpy()).mean() >= 0.85
    canonical = data.canonical.astype(np.float32)
    before = np.abs(to_pixels(data.images) - canonical).mean()
    after = np.abs(to_pixels(torch.from_numpy(warped)) - canonical).mean()
    assert after <= 0.8 * before
