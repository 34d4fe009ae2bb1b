"""A reference DeconvNet for ZF Net written with autograd, independent of export/families/deconvnet.py.

Zeiler & Fergus's DeconvNet is backpropagation with one change: a ReLU passes the rectified signal
down (ReLU of what arrives) instead of gating it by where the forward pass was positive. Max-pool
backward is unpooling by the switches, and a convolution's backward is filtering with its transposed
filters; so the gradient of the kept activation with respect to the image, through ReLUs of that
one kind, is the paper's projection.

The class mode's reference is plain autograd: the layers' outputs built with ordinary ReLUs, the
classifier on the last, and each channel's sum of activation x gradient of the class's logit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from export.families.zfnet import ZFNet


class DeconvReLU(torch.autograd.Function):
    """ReLU forward; backward rectifies the arriving signal (the DeconvNet rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, signal: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return signal.clamp(min=0)


ReLU = Callable[[torch.Tensor], Any]


def layer_tops(model: ZFNet, images: torch.Tensor, relu: ReLU = DeconvReLU.apply) -> list[torch.Tensor]:
    """The five layers' outputs (after their max-pool where they have one), built with DeconvReLU (or
    ``relu``)."""
    pool = [lambda x, p=p: p(x)[0] for p in model.pools]  # MaxPool2d(return_indices=True)
    first = pool[0](relu(model.conv1(images)))
    second = pool[1](relu(model.conv2(first)))
    third = relu(model.conv3(second))
    fourth = relu(model.conv4(third))
    return [first, second, third, fourth, pool[2](relu(model.conv5(fourth)))]


def features_tops(features: nn.Sequential, images: torch.Tensor, relu: ReLU = DeconvReLU.apply) -> list[torch.Tensor]:
    """The same for a torchvision-style ``features`` (AlexNet, VGG): each convolution's rectified output,
    or the output of the max-pool right after it; batch norms run as they are (eval mode)."""
    tops: list[torch.Tensor] = []
    x = images
    for module in features:
        if isinstance(module, nn.ReLU):
            x = relu(x)
            tops.append(x)
        else:
            x = module(x)
            if isinstance(module, nn.MaxPool2d):
                tops[-1] = x
    return tops


Tops = Callable[[torch.Tensor], list[torch.Tensor]]
"""Images (1, 3, S, S) -> every layer's output, built with DeconvReLU."""


@dataclass(frozen=True)
class Projection:
    channel: int
    activation: float
    position: tuple[int, int]  # y, x on the layer's map
    pixels: torch.Tensor  # (3, S, S)


def project(tops: Tops, image: torch.Tensor, layer: int, rank: int) -> Projection:
    """The ``rank``-th strongest channel (by peak, ties by index) of ``layer`` (1-based) on one (3, S, S) image."""
    x = image.unsqueeze(0).clone().requires_grad_(True)
    top = tops(x)[layer - 1]
    peaks = top[0].flatten(1).max(1).values.detach()
    order = sorted(range(len(peaks)), key=lambda c: (-float(peaks[c]), c))
    channel = order[rank]
    flat = int(top[0, channel].flatten().argmax())
    y, x_ = divmod(flat, top.shape[-1])
    seed = torch.zeros_like(top)
    seed[0, channel, y, x_] = top[0, channel, y, x_].detach()
    (pixels,) = torch.autograd.grad(top, x, grad_outputs=seed)
    return Projection(channel, float(peaks[channel]), (y, x_), pixels[0])


def class_contributions(
    tops: Tops, head: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, target: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer, each channel's sum over its map of activation x d logit[target] / d activation, on one
    (3, S, S) image, by autograd; and the logits. ``tops`` must use ordinary ReLUs (torch.relu)."""
    outputs = tops(image.unsqueeze(0))
    logits = head(outputs[-1])
    gradients = torch.autograd.grad(logits[0, target], outputs)
    return [(top * gradient)[0].sum((1, 2)).detach() for top, gradient in zip(outputs, gradients, strict=True)], (
        logits[0].detach()
    )


def zfnet_contributions(model: ZFNet, image: torch.Tensor, target: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """class_contributions through ZF Net's own layers and classifier."""
    return class_contributions(
        functools.partial(layer_tops, model, relu=torch.relu),
        lambda top: model.classifier(top.flatten(1)),
        image,
        target,
    )


def receptive_field(model: ZFNet, layer: int, y: int, x: int) -> tuple[int, int, int, int]:
    """Rows and columns [y1, y2) x [x1, x2) of the input that map position (y, x) of ``layer`` sees,
    unclipped: each operation below it, top down, widens [low, high] to [low*s - p, high*s - p + k - 1]."""
    convs = [model.conv1, model.conv2, model.conv3, model.conv4, model.conv5]
    operations: list[nn.Conv2d | nn.MaxPool2d] = []
    pooled_after = {0: 0, 1: 1, 4: 2}
    for index, conv in enumerate(convs[:layer]):
        operations.append(conv)
        if index in pooled_after:
            operations.append(model.pools[pooled_after[index]])
    low_y, high_y, low_x, high_x = y, y, x, x
    for operation in reversed(operations):
        kernel, stride, padding = (_first(getattr(operation, a)) for a in ("kernel_size", "stride", "padding"))
        low_y, high_y = low_y * stride - padding, high_y * stride - padding + kernel - 1
        low_x, high_x = low_x * stride - padding, high_x * stride - padding + kernel - 1
    return low_y, high_y + 1, low_x, high_x + 1


def _first(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]
