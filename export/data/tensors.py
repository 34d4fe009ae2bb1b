"""Scenes as torch tensors for training and evaluation (the export side only; serving never imports this).

Data sets are cached per process: the five classifiers train on the same scenes, drawn once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contract.scenes import SPLITS, make_scenes, stack_images, stack_labels

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)

# Seeds offset from the user's seed so that training and held-out scenes never coincide (the families
# not yet drawing from the train / validation / test splits of contract.scenes).
TRAIN_SEED_OFFSET = 0
HELD_OUT_SEED_OFFSET = 1_000_003

EVALUATION_SPLIT_ENV = "NINEFOLD_EVALUATION_SPLIT"


def evaluation_split() -> str:
    """The split quality is measured on: "test" (what reports and gates use), or "validation" while a
    recipe is being tuned (NINEFOLD_EVALUATION_SPLIT=validation), so that the test scenes stay unseen."""
    split = os.environ.get(EVALUATION_SPLIT_ENV, "test")
    if split not in SPLITS[1:]:
        raise ValueError(f"{EVALUATION_SPLIT_ENV}={split!r}; use validation or test")
    return split


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 ``(x / 255 - mean) / std``: the served preprocessing."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((tensor - mean_t) / std_t).contiguous()


@dataclass(frozen=True)
class LabelledImages:
    """pixels: (N, 3, S, S) uint8 scenes (kept as bytes: 4x less memory); labels: (N,) int64 class ids."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def images(self, index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """(n, 3, S, S) float32 of the selected samples, normalised with DEFAULT_MEAN / DEFAULT_STD."""
        mean = torch.tensor(DEFAULT_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(DEFAULT_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return (self.pixels[index].float().div_(255) - mean) / std


@functools.lru_cache(maxsize=8)
def classification_set(count: int, size: int, seed: int, split: str) -> LabelledImages:
    """``count`` single-object scenes of ``size`` pixels from ``split`` (cached per process: families share them)."""
    scenes = make_scenes(count, size, seed, split=split)
    pixels = torch.from_numpy(stack_images(scenes)).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(pixels=pixels, labels=torch.from_numpy(stack_labels(scenes)))
