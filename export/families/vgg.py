"""VGG (Simonyan & Zisserman 2014): only 3x3 convolutions (stride 1, padding 1) and 2x2 max-pools, the
number of filters doubling after each pool, then three fully connected layers with dropout.

small: configuration A's layer pattern (8 convolutions in 5 blocks) at 32 x 32 with a quarter of the
filters, so five pools bring the map to 1 x 1; batch normalisation after each convolution (torchvision's
vgg*_bn variants) lets it train from scratch in seconds, where the paper initialised deeper nets from
shallower ones. Trained with the paper's scale jittering (random rescale, crop back, reflections).
full: torchvision's VGG-16 (or VGG-19, and the _bn variants, picked from the checkpoint's keys) at 224.
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
    full_config_fields,
    init_relu_layers,
    scale_jitter,
    small_config_fields,
)
from export.families.deconvnet import features_explain_graphs
from export.train import SGDRecipe

POOL = 0  # marks a 2x2 max-pool in a layer pattern

# Convolution counts of torchvision's VGG variants -> (depth, constructor, constructor with batch norm).
_TORCHVISION = {
    8: (11, torchvision.models.vgg11, torchvision.models.vgg11_bn),
    10: (13, torchvision.models.vgg13, torchvision.models.vgg13_bn),
    13: (16, torchvision.models.vgg16, torchvision.models.vgg16_bn),
    16: (19, torchvision.models.vgg19, torchvision.models.vgg19_bn),
}
_DEPTH_TO_CONVS = {depth: convs for convs, (depth, _, _) in _TORCHVISION.items()}


@dataclass(frozen=True)
class VGGConfig(ClassifierConfig):
    """depth: 11/13/16/19 (full); pattern: filters per conv and POOL marks (small); fc_width: hidden FC units."""

    depth: int
    batch_norm: bool
    pattern: tuple[int, ...] = ()
    fc_width: int = 4096
    dropout: float = 0.5


class SmallVGG(nn.Module):
    """(B, 3, S, S) normalised images -> (B, num_classes) logits; torchvision's features/classifier layout."""

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = 3, config.image_size
        for width in config.pattern:
            if width == POOL:
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
                continue
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, config.fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.fc_width, config.fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.fc_width, config.num_classes),
        )
        init_relu_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build(config: VGGConfig) -> nn.Module:
    if config.name == "small":
        return SmallVGG(config)
    _, plain, with_bn = _TORCHVISION[_DEPTH_TO_CONVS[config.depth]]
    return (with_bn if config.batch_norm else plain)(weights=None, num_classes=config.num_classes)


def weights_variant(config: VGGConfig, state_dict: Mapping[str, torch.Tensor]) -> VGGConfig:
    """The VGG depth and batch-norm flag a torchvision checkpoint holds (conv count, running stats)."""
    if config.name == "small":
        return config
    convs = sum(1 for key, value in state_dict.items() if key.startswith("features.") and value.ndim == 4)
    batch_norm = any(key.startswith("features.") and key.endswith("running_mean") for key in state_dict)
    depth = _TORCHVISION[convs][0] if convs in _TORCHVISION else config.depth  # else: strict load reports it
    return replace(config, depth=depth, batch_norm=batch_norm)


def reference_weights(config: VGGConfig) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet weights of this depth and batch-norm flag."""
    return torchvision.models.get_model_weights(f"vgg{config.depth}{'_bn' if config.batch_norm else ''}").DEFAULT


SMALL = VGGConfig(
    **small_config_fields(
        image_size=32,
        recipe=ClassifierRecipe(
            # Batches of 32: twice the updates for the same arithmetic; 6 epochs reach 0.994 top-1 where
            # 3 epochs of 64 stopped at 0.92 (circles taken for hexagons at 32 x 32).
            sgd=SGDRecipe(epochs=6, batch_size=32, lr=0.01, weight_decay=5e-4),
            train_scenes=8000,
            augment=functools.partial(scale_jitter, max_scale=1.4),  # S in [32, 45], crop 32 (paper: [256, 512])
        ),
    ),
    depth=11,
    batch_norm=True,
    pattern=(16, POOL, 32, POOL, 64, 64, POOL, 128, 128, POOL, 128, 128, POOL),  # configuration A, width / 4
    fc_width=256,
    dropout=0.3,
)
FULL = VGGConfig(**full_config_fields(), depth=16, batch_norm=False)

register_family(
    ClassifierFamily(
        name="vgg",
        configs={"small": SMALL, "full": FULL},
        builder=build,
        weights_variant=weights_variant,
        extra_graphs=features_explain_graphs,  # the DeconvNet over VGG's layers, batch norms folded in
        reference_weights=reference_weights,
    )
)
