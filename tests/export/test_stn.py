"""Spatial transformer family: identity start, warp contract, inverse thetas, checkpoint loading."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from export.data.scenes import affine_sample
from export.families import get_family
from export.families.base import WeightsError
from export.families.stn import FULL, SMALL, SpatialTransformerNet, distorted_set, train_stn

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
