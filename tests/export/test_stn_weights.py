"""Bring your own STN weights: a checkpoint the test writes -> `ninefold export --config full` -> the served
Warp answers what PyTorch answers, for a localisation net + sampler alone and for one with a head of its own
class count, at an input size of its own."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clients.client import VisionClient
from contract.scenes import make_scenes
from export.__main__ import main as export_main
from export.data.tensors import DEFAULT_MEAN, DEFAULT_STD, normalise
from export.families.stn import FULL
from tests.export.test_stn import write_checkpoint
from tests.serving.vision_helpers import vision_server

CHECKPOINTS = {
    "tps-headless": replace(FULL, transform="tps", control_grid=3, classes=0, image_size=40, loc_widths=(4, 8)),
    "projective-5-classes": replace(FULL, transform="projective", classes=5, image_size=32, loc_widths=(4, 8)),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_full_stn_checkpoint_exports_and_serves_what_pytorch_answers(tmp_path: Path, name: str) -> None:
    config = replace(CHECKPOINTS[name], loc_hidden=16, head_widths=(4, 8))
    checkpoint = tmp_path / "stn.pt"
    net = write_checkpoint(checkpoint, config)
    repository = tmp_path / "repository"
    arguments = ["--families", "stn", "--config", "full", "--weights", f"stn={checkpoint}", "--out", str(repository)]
    assert export_main(arguments) == 0

    side = config.image_size
    images = np.stack([scene.image for scene in make_scenes(3, side, seed=4, distort=True)])
    with torch.no_grad():
        outputs = net(normalise(images, DEFAULT_MEAN, DEFAULT_STD))
    std, mean = np.array(DEFAULT_STD) * 255, np.array(DEFAULT_MEAN) * 255
    expected = np.clip(np.rint(outputs[0].permute(0, 2, 3, 1).numpy() * std + mean), 0, 255)
    with vision_server(repository) as server, VisionClient(server.target, timeout=60) as client:
        answer = client.warp(list(images), model="stn_full")
    assert answer.model.name == "stn_full"
    for index, result in enumerate(answer.results):
        assert result.transform == config.transform
        assert np.allclose(np.array(result.theta).reshape(outputs[1][index].shape), outputs[1][index], atol=1e-4)
        warped = np.asarray(Image.open(io.BytesIO(result.png))).astype(np.float64)
        assert warped.shape == (side, side, 3) and np.abs(warped - expected[index]).max() <= 1
        if config.classes:
            assert result.label == str(int(outputs[2][index].argmax())) and 0 < result.score <= 1
        else:
            assert (result.label, result.score) == ("", 0.0)
