"""Layer stacks several small families build their image encoders from."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_stages(widths: Sequence[int], channels: int = 3) -> list[nn.Module]:
    """One stage per width: 3x3 conv (no bias: batch norm follows), batch norm, ReLU, 2x2 max-pool.

    A list, so that a family can append to it before wrapping it in nn.Sequential; the parameter names
    (`<index>.weight`) are those of the stages written out by hand, so checkpoints keep loading.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = width
    return layers
