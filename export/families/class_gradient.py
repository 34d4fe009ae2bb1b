"""The classifier head of a DeconvNet's network, forward and backward, written out as plain ops.

Explain's class mode ranks a layer's channels by their contribution to one class's logit on the image:
the sum over the channel's map of activation x gradient of the logit with respect to that activation
(gradient x input; first-order exact for a network of ReLUs, max-pools and linear maps). torch.onnx
exports no autograd, so the backward pass is spelled out: through the head here (the last linear
layer's row of the class, then each hidden layer's transposed weights gated by its forward ReLU
pattern, then the transpose of the adaptive average pool), and down the convolutional stages in
export/families/deconvnet.py.

Covered heads, the layouts of ZF Net, AlexNet and VGG (small and torchvision): an optional
``AdaptiveAvgPool2d`` (``avgpool``), flatten, and a ``classifier`` Sequential of Linear layers, each but
the last followed by a ReLU, with Dropout anywhere (the identity in eval mode). Others are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class ClassHead(nn.Module):
    """The head over the last feature map (C, side, side): logits, and the gradient of one class's logit
    with respect to that map."""

    pooling: torch.Tensor | None

    def __init__(self, linears: Sequence[nn.Linear], side: int, pooled_side: int | None = None) -> None:
        super().__init__()
        self.linears = nn.ModuleList(linears)
        pooling = None if pooled_side in (None, side) else average_pooling_matrix(side, pooled_side)
        self.register_buffer("pooling", pooling)

    @property
    def num_classes(self) -> int:
        return cast(nn.Linear, self.linears[-1]).out_features

    def forward(self, top: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """logits [B, classes] of the map ``top`` [B, C, H, W], and each hidden layer's ReLU pattern (1 where
        it passed) for ``gradient``."""
        x = top.flatten(2)
        if self.pooling is not None:
            x = x @ self.pooling
        x = x.flatten(1)
        passed = []
        for linear in self.linears[:-1]:
            x = F.relu(linear(x))
            passed.append((x > 0).to(x.dtype))
        return self.linears[-1](x), passed

    def gradient(self, passed: Sequence[torch.Tensor], classes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """d logit[class] / d top, shaped as ``top`` (``shape``), per row; ``classes`` INT64 [B, 1] (a negative
        class is read as class 0: the caller ignores those rows)."""
        gradient = cast(nn.Linear, self.linears[-1]).weight[classes.clamp(min=0).squeeze(1)]
        for linear, gate in zip(reversed(self.linears[:-1]), reversed(passed), strict=True):
            gradient = (gradient * gate) @ cast(nn.Linear, linear).weight
        gradient = gradient.view(shape[0], shape[1], -1)
        if self.pooling is not None:
            gradient = gradient @ self.pooling.T
        return gradient.view(shape)


def average_pooling_matrix(side: int, pooled_side: int) -> torch.Tensor:
    """(side^2, pooled_side^2): a flattened map times it is AdaptiveAvgPool2d(pooled_side) of the map
    (PyTorch's windows: [floor(i * side / out), ceil((i + 1) * side / out)))."""
    rows = torch.zeros(side, pooled_side)
    for cell in range(pooled_side):
        start, end = cell * side // pooled_side, -(-(cell + 1) * side // pooled_side)
        rows[start:end, cell] = 1.0 / (end - start)
    return torch.kron(rows, rows)


def class_head(model: nn.Module, side: int) -> ClassHead:
    """The head of ``model`` (ZF Net, AlexNet or VGG, module doc) over its last feature map of ``side``;
    ValueError naming what the construction does not cover (export/families/deconvnet.py also checks its
    logits against the model's own)."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no `classifier` Sequential for Explain's class mode")
    linears: list[nn.Linear] = []
    gated: list[bool] = []
    for module in classifier:
        if isinstance(module, nn.Linear):
            linears.append(module)
            gated.append(False)
        elif isinstance(module, nn.ReLU) and gated and not gated[-1]:
            gated[-1] = True
        elif not isinstance(module, nn.Dropout):
            raise ValueError(f"Explain's class mode does not cover {module} in {type(model).__name__}'s classifier")
    if not linears or gated != [True] * (len(linears) - 1) + [False]:
        raise ValueError(
            f"Explain's class mode needs a ReLU after every Linear of the classifier but the last, "
            f"got {type(model).__name__}'s {classifier}"
        )
    return ClassHead(linears, side, _pooled_side(model))


def _pooled_side(model: nn.Module) -> int | None:
    pool = getattr(model, "avgpool", None)
    if pool is None:
        return None
    size = pool.output_size if isinstance(pool, nn.AdaptiveAvgPool2d) else None
    sides = (size, size) if isinstance(size, int) else size
    if sides is None or sides[0] != sides[1] or sides[0] is None:
        raise ValueError(f"Explain's class mode covers a square AdaptiveAvgPool2d before the classifier, got {pool}")
    return int(sides[0])
