"""An exponential moving average of a network's weights, and BatchNorm statistics measured for it.

Why: a GAN generator's weights do not settle; they circle the point training converges to, and the
average of the last thousand or so steps draws cleaner samples than the last step (Yazici et al. 2019,
"The Unusual Effectiveness of Averaging in GAN Training"; Karras et al. 2018 serve the averaged
generator). BatchNorm running statistics are not averaged with the weights: they describe the raw
weights' activations, which the averaged weights do not produce, so they are measured anew.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class WeightAverage:
    """Every step, average <- decay x average + (1 - decay) x weights, over a module's parameters."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay must lie strictly between 0 and 1, got {decay}")
        self.decay = decay
        self.average = [parameter.detach().clone() for parameter in module.parameters()]

    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average (call after each optimiser step)."""
        with torch.no_grad():
            for average, parameter in zip(self.average, module.parameters(), strict=True):
                average.lerp_(parameter, 1.0 - self.decay)

    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the module's weights with the average."""
        with torch.no_grad():
            for average, parameter in zip(self.average, module.parameters(), strict=True):
                parameter.copy_(average)


def reestimate_batch_norm(module: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running mean and variance to their plain average over `batches` (inputs of
    `module`, fed in train mode without gradients); returns the module in eval mode."""
    norms = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches, not an exponential one
    module.train()
    with torch.no_grad():
        for batch in batches:
            module(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return module.eval()
