"""Random weights whose outputs depend on the input, for tests that stand in for a user's checkpoint.

No weights can be downloaded here, and a freshly initialised network often answers (nearly) the same
for every input (torchvision's init makes GoogLeNet answer its fc bias), so a comparison of two of them
could not fail. ``liven`` gives convolutions and linear layers He-normal weights and random biases and
measures every BatchNorm's statistics on one calibration pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from export.averaging import reestimate_batch_norm


def imagenet_batch() -> torch.Tensor:
    """The default calibration input: four random 64 x 64 images (every torchvision classifier takes them)."""
    return torch.randn(4, 3, 64, 64)


@torch.no_grad()
def liven(
    model: nn.Module, calibration: Callable[[], torch.Tensor] | None = imagenet_batch, seed: int = 1
) -> nn.Module:
    """He-normal conv / linear weights, N(0, 0.1) biases, BatchNorm statistics measured on one batch
    ``calibration()`` (drawn after the weights; None for a model without BatchNorm); returns the model in
    eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.normal_(module.bias, std=0.1)
    batches = () if calibration is None else (calibration() for _ in range(1))  # drawn lazily, after init
    return reestimate_batch_norm(model, batches)
