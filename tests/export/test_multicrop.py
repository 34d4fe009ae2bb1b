"""The classifiers' multi-crop gate (export.families.multicrop) misses what it must: a model that answers one
class, and a trained model measured with a wrong crop geometry; the served geometry clears it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import contract.multicrop
from contract import model_config
from contract.names import IMAGES, LOGITS, PREPROCESSING_PARAMETER
from contract.preprocessing import Preprocessing
from contract.scenes import SHAPES
from contract.tensors import TensorSpec
from export import onnx as onnx_export
from export.families.base import GraphSpec, ParityCase
from export.families.classifier import TOP1_THRESHOLD
from export.families.multicrop import GATED_CROPS, MULTICROP_SCENES, multicrop_gate

SIDE = 32


class OneClass(nn.Module):
    """Whatever the image, class 0: a classifier broken the way a collapsed training leaves one."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        answer = torch.zeros(len(SHAPES))
        answer[0] = 10.0
        return images.mean(dim=(1, 2, 3))[:, None] * 0.0 + answer


def test_a_classifier_that_answers_one_class_misses_the_bar() -> None:
    graph = GraphSpec(
        module=OneClass(),
        inputs=(TensorSpec(IMAGES, (3, SIDE, SIDE)),),
        outputs=(TensorSpec(LOGITS, (len(SHAPES),)),),
        parity_cases=(ParityCase("random", {IMAGES: np.zeros((1, 3, SIDE, SIDE), np.float32)}),),
        max_batch_size=8,
        task=None,
    )
    preprocessing = Preprocessing(size=(SIDE, SIDE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with onnx_export.exported_runner([graph]) as run:
        details, bar = multicrop_gate(run, preprocessing, seed=0, split="test", threshold=TOP1_THRESHOLD)
    assert not bar.passed and bar.describe().startswith(f"top1_{GATED_CROPS}_crops 0.")
    figures = {row["crops"]: row for row in details["by_crops"]}
    assert sorted(figures) == [1, 5, 10]
    assert all(row["accuracy"] == figures[1]["accuracy"] < 0.5 for row in figures.values())  # class 0's share
    assert all(row["agreement_with_one_crop"] == 1.0 for row in figures.values())
    assert details["scenes"] == MULTICROP_SCENES and details["scene_side"] > SIDE


def test_the_served_crops_clear_the_bar_and_a_wrong_geometry_misses_it(
    small_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exported small AlexNet, measured as served, then with crops of half the resized side (a quarter of
    the scene, the object often cut away): the same model and scenes, only the geometry wrong."""
    folder = small_repository / "alexnet_small"
    served = Preprocessing.from_json(model_config.parameters(model_config.read(folder))[PREPROCESSING_PARAMETER])
    run = onnx_export.runner({"": onnx_export.open_session(folder / "1" / "model.onnx")})
    _, bar = multicrop_gate(run, served, seed=0, split="test", threshold=TOP1_THRESHOLD)
    assert bar.passed, bar.describe()
    monkeypatch.setattr(contract.multicrop, "CROP_FRACTION", 0.5)
    _, wrong = multicrop_gate(run, served, seed=0, split="test", threshold=TOP1_THRESHOLD)
    assert not wrong.passed, wrong.describe()
