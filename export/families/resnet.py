"""ResNet (He et al. 2015): residual blocks F(x) + x.

small: the paper's own CIFAR-10 network shape (Section 4.2) at 32 x 32: a 3x3 stem, three stages of basic
blocks with 16/32/64 filters (stride 2 and a 1x1 projection shortcut where the shape changes), global
average pooling, one linear layer. Basic blocks, not bottlenecks: at this depth the paper uses basic ones.
full: torchvision's ResNet-18/34 (basic blocks) or ResNet-50/101/152 (bottlenecks) at 224, so torchvision
state_dicts load as they are.
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
class ResNetConfig(ClassifierConfig):
    """depth: for full configs the torchvision depth (18, 34, 50, 101, 152); widths/blocks: small stages."""

    depth: int
    widths: tuple[int, ...] = ()
    blocks_per_stage: int = 0


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with the input added back before the last ReLU (projection when reshaped)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return self.relu(residual + self.shortcut(x))


class SmallResNet(nn.Module):
    """(B, 3, S, S) normalised images -> (B, num_classes) logits."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        width = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
        blocks: list[nn.Module] = []
        in_channels = width
        for stage, out_channels in enumerate(config.widths):
            for index in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, config.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x)))  # (B, C, 1, 1)
        return self.fc(torch.flatten(features, 1))


_TORCHVISION = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}


# (bottleneck blocks?, blocks per stage) -> torchvision depth
_LAYOUTS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}


def build(config: ResNetConfig) -> nn.Module:
    if config.name == "small":
        return SmallResNet(config)
    return _TORCHVISION[config.depth](weights=None, num_classes=config.num_classes)


def weights_variant(config: ResNetConfig, state_dict: Mapping[str, torch.Tensor]) -> ResNetConfig:
    """The torchvision depth a checkpoint holds, from its block counts and block type (conv3 = bottleneck)."""
    if config.name == "small":
        return config
    bottleneck = "layer1.0.conv3.weight" in state_dict
    blocks = tuple(
        len({key.split(".")[1] for key in state_dict if key.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    )
    return replace(config, depth=_LAYOUTS.get((bottleneck, blocks), config.depth))  # unknown: strict load says


def reference_weights(config: ResNetConfig) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet weights of this depth (ResNet-50: IMAGENET1K_V2, resize 232)."""
    return torchvision.models.get_model_weights(f"resnet{config.depth}").DEFAULT


SMALL = ResNetConfig(
    **small_config_fields(
        image_size=32,
        # The paper's CIFAR recipe (SGD 0.1, momentum 0.9, weight decay 1e-4, translations + flips),
        # shortened: the shapes are learnt in a few epochs.
        recipe=ClassifierRecipe(
            sgd=SGDRecipe(epochs=3, batch_size=32, lr=0.05, weight_decay=1e-4),  # lr 0.1 scaled to batch 32
            train_scenes=8000,
            augment=functools.partial(flip_and_crop, pad=2),
        ),
    ),
    depth=8,  # 1 stem conv + 3 stages x 1 basic block x 2 convs + fc: ResNet-8 in the paper's 6n+2 family
    widths=(16, 32, 64),  # the paper's CIFAR widths, doubling when the map halves
    blocks_per_stage=1,
)
FULL = ResNetConfig(**full_config_fields(), depth=50)

register_family(
    ClassifierFamily(
        name="resnet",
        configs={"small": SMALL, "full": FULL},
        builder=build,
        weights_variant=weights_variant,
        reference_weights=reference_weights,
    )
)
