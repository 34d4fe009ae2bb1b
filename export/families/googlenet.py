"""GoogLeNet (Szegedy et al. 2015): Inception modules (parallel 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1
branches, the 1x1 convolutions reducing width before the expensive ones), global average pooling instead
of large fully connected layers, and auxiliary classifiers on intermediate layers at training time only.

small: a 3x3 conv + max-pool stem and five Inception modules in three stages at 32 x 32 (maps 16 -> 8 ->
4), one auxiliary classifier after the third module weighted 0.3 in the loss as in the paper, dropout 0.4
before the single linear layer. Convolutions carry batch norm, as torchvision's GoogLeNet does.
full: torchvision's GoogLeNet at 224 with its auxiliary heads (so torchvision state_dicts load as is;
a checkpoint without aux keys loads into a model without them). The exported graph never contains them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torchvision
from torch import nn

from export.families import register_family
from export.families.classifier import (
    ClassifierConfig,
    ClassifierFamily,
    ClassifierRecipe,
    flip_and_crop,
    full_config_fields,
    small_config_fields,
)
from export.train import SGDRecipe


@dataclass(frozen=True)
class InceptionWidths:
    """Output filters of the 1x1 branch, 3x3 reduce / 3x3, 5x5 reduce / 5x5, and the pool projection."""

    one: int
    three_reduce: int
    three: int
    five_reduce: int
    five: int
    pool: int

    @property
    def out(self) -> int:
        return self.one + self.three + self.five + self.pool


@dataclass(frozen=True)
class GoogLeNetConfig(ClassifierConfig):
    """stages: Inception widths per stage (a 3x3/2 max-pool between stages); aux_after: module index
    (0-based, over all modules) whose output feeds the auxiliary classifier; aux_logits: full only."""

    stem_width: int = 0
    stages: tuple[tuple[InceptionWidths, ...], ...] = ()
    aux_after: int = 0
    dropout: float = 0.4
    aux_logits: bool = True
    transform_input: bool = False


def conv_bn(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """(B, C, H, W) -> (B, widths.out, H, W): four branches concatenated along channels."""

    def __init__(self, in_channels: int, widths: InceptionWidths) -> None:
        super().__init__()
        self.branch1 = conv_bn(in_channels, widths.one, 1)
        self.branch3 = nn.Sequential(
            conv_bn(in_channels, widths.three_reduce, 1), conv_bn(widths.three_reduce, widths.three, 3)
        )
        self.branch5 = nn.Sequential(
            conv_bn(in_channels, widths.five_reduce, 1), conv_bn(widths.five_reduce, widths.five, 5)
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(in_channels, widths.pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class AuxiliaryClassifier(nn.Module):
    """Training-time side head: average pool -> 1x1 conv -> FC -> dropout 0.7 -> FC (paper section 5)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = conv_bn(in_channels, 32, 1)
        self.fc1 = nn.Linear(32 * 16, 128)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class SmallGoogLeNet(nn.Module):
    """(B, 3, S, S) normalised images -> logits (B, num_classes) in eval mode; (logits, aux) in training."""

    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        # The paper's stem shrinks 224 -> 28 before the first Inception module; here a 3x3 conv and one
        # 3x3/2 max-pool take 32 -> 16, which also makes the modules 4x cheaper to train.
        self.stem = nn.Sequential(conv_bn(3, config.stem_width, 3), nn.MaxPool2d(3, 2, 1))
        modules: list[nn.Module] = []
        channels = config.stem_width
        self.stage_ends: list[int] = []
        for stage in config.stages:
            for widths in stage:
                modules.append(Inception(channels, widths))
                channels = widths.out
            self.stage_ends.append(len(modules) - 1)
        self.inceptions = nn.ModuleList(modules)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.aux = AuxiliaryClassifier(_module_out(config, config.aux_after), config.num_classes)
        self.aux_after = config.aux_after
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(config.dropout))
        self.fc = nn.Linear(channels, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)  # (B, stem, S/2, S/2)
        aux = None
        for index, module in enumerate(self.inceptions):
            x = module(x)
            if index == self.aux_after and self.training:
                aux = self.aux(x)
            if index in self.stage_ends[:-1]:
                x = self.pool(x)  # halves the map between stages
        logits = self.fc(self.head(x))
        return (logits, aux) if aux is not None else logits


def _module_out(config: GoogLeNetConfig, index: int) -> int:
    flat = [widths for stage in config.stages for widths in stage]
    return flat[index].out


def build(config: GoogLeNetConfig) -> nn.Module:
    if config.name == "small":
        return SmallGoogLeNet(config)
    return torchvision.models.googlenet(
        weights=None,
        num_classes=config.num_classes,
        aux_logits=config.aux_logits,
        transform_input=config.transform_input,
        init_weights=True,
    )


def weights_variant(config: GoogLeNetConfig, state_dict: Mapping[str, torch.Tensor]) -> GoogLeNetConfig:
    """With or without the auxiliary heads, as the checkpoint has them (they are never exported)."""
    if config.name == "small":
        return config
    return replace(config, aux_logits=any(key.startswith("aux1.") for key in state_dict))


SMALL = GoogLeNetConfig(
    **small_config_fields(
        image_size=32,
        recipe=ClassifierRecipe(
            sgd=SGDRecipe(epochs=3, batch_size=32, lr=0.025, weight_decay=2e-4),
            train_scenes=8000,
            augment=functools.partial(flip_and_crop, pad=2),
            aux_weight=0.3,  # the paper's weight for each auxiliary loss
        ),
    ),
    stem_width=16,
    stages=(
        (InceptionWidths(8, 8, 16, 4, 8, 8), InceptionWidths(16, 16, 24, 4, 8, 8)),  # 16x16: out 40, 56
        (InceptionWidths(16, 16, 24, 4, 8, 8), InceptionWidths(24, 16, 32, 4, 8, 8)),  # 8x8: out 56, 72
        (InceptionWidths(32, 16, 32, 4, 8, 8),),  # 4x4: out 80
    ),
    aux_after=2,
)
# transform_input (the model re-normalises ImageNet-normalised input to [-1, 1] itself) is off, torchvision's
# default for a model trained from scratch; its released ImageNet weights (ported from TensorFlow) need it on:
# `--set transform_input=true`. A state_dict does not record it, so it cannot be read from the checkpoint.
FULL = GoogLeNetConfig(**full_config_fields(), transform_input=False)

register_family(
    ClassifierFamily(
        name="googlenet",
        configs={"small": SMALL, "full": FULL},
        builder=build,
        weights_variant=weights_variant,
        reference_weights=lambda config: torchvision.models.GoogLeNet_Weights.DEFAULT,
    )
)
