"""ZF Net (Zeiler & Fergus 2013): AlexNet's design with a 7x7 stride-2 first convolution (instead of
11x11 stride 4) and a stride-2 second convolution, chosen by looking at DeconvNet visualisations.

The max-pooling layers record their switches (``forward_with_switches``); the family exports, beside the
classifier, the paper's DeconvNet over the same trained layers (``zfnet_<config>_explain``, task explain,
export/families/deconvnet.py): unpool by the switches, rectify, filter back down to pixels.

small: the same eight layers at 64 x 64 (maps 64 -> 30 -> 15 -> 6 -> 3 -> 1, as 224 -> 110 -> 55 -> 26 ->
13 -> 6 in the paper) with narrower layers. full: the paper's layer sizes at 224 (torchvision has no ZF
Net, so its state_dict layout is this module's own, documented in docs/EXPORT.md; a checkpoint of a ZF Net
written as one plain ``nn.Sequential`` is renamed into it by ``from_sequential``). The widths of a
checkpoint's layers are read from it, so a narrower or wider ZF Net loads too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from export.families import register_family
from export.families.base import GraphSpec, WeightsError
from export.families.classifier import (
    ClassifierConfig,
    ClassifierFamily,
    ClassifierRecipe,
    dropout_fc_head,
    flip_and_crop,
    full_config_fields,
    init_relu_layers,
    small_config_fields,
)
from export.families.deconvnet import Pool, Stage, explain_graph
from export.train import SGDRecipe


@dataclass(frozen=True)
class ZFNetConfig(ClassifierConfig):
    """conv_widths: filters of the five convolutions; fc_width: units of the two hidden FC layers."""

    conv_widths: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    fc_width: int = 4096
    dropout: float = 0.5


# (kernel, stride, padding) of conv1, conv2 and of the three max-pools, as in the paper's figure 3.
_CONV1 = (7, 2, 1)
_CONV2 = (5, 2, 0)
_POOLS = ((3, 2, 1), (3, 2, 1), (3, 2, 0))


def _out_side(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def _pooled_side(image_size: int) -> int:
    side = _out_side(image_size, *_CONV1)
    side = _out_side(side, *_POOLS[0])
    side = _out_side(side, *_CONV2)
    side = _out_side(side, *_POOLS[1])
    return _out_side(side, *_POOLS[2])


@dataclass(frozen=True)
class SwitchedFeatures:
    """features: (B, C, s, s) last feature map; switches: argmax indices of each max-pool (DeconvNet)."""

    features: torch.Tensor
    switches: tuple[torch.Tensor, ...]


class ZFNet(nn.Module):
    """(B, 3, S, S) normalised images -> (B, num_classes) logits."""

    def __init__(self, config: ZFNetConfig) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = config.conv_widths
        self.conv1 = nn.Conv2d(3, c1, *_CONV1)
        self.conv2 = nn.Conv2d(c1, c2, *_CONV2)
        self.conv3 = nn.Conv2d(c2, c3, 3, 1, 1)
        self.conv4 = nn.Conv2d(c3, c4, 3, 1, 1)
        self.conv5 = nn.Conv2d(c4, c5, 3, 1, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, s, p, return_indices=True) for k, s, p in _POOLS)
        self.relu = nn.ReLU(inplace=True)
        side = _pooled_side(config.image_size)
        self.classifier = dropout_fc_head(c5 * side * side, config.fc_width, config.num_classes, config.dropout)
        init_relu_layers(self)

    def _features(self, x: torch.Tensor, keep_switches: bool) -> SwitchedFeatures:
        switches = []

        def pool(index: int, tensor: torch.Tensor) -> torch.Tensor:
            if not keep_switches:
                return nn.functional.max_pool2d(tensor, *_POOLS[index])
            pooled, indices = self.pools[index](tensor)
            switches.append(indices)
            return pooled

        x = pool(0, self.relu(self.conv1(x)))  # (B, c1, S/4, S/4)
        x = pool(1, self.relu(self.conv2(x)))  # (B, c2, S/16, S/16)
        x = self.relu(self.conv5(self.relu(self.conv4(self.relu(self.conv3(x))))))
        x = pool(2, x)  # (B, c5, s, s)
        return SwitchedFeatures(features=x, switches=tuple(switches))

    def forward_with_switches(self, x: torch.Tensor) -> SwitchedFeatures:
        """The last feature map and the three pooling switches, for DeconvNet visualisation."""
        return self._features(x, keep_switches=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self._features(x, keep_switches=False).features, 1))


CONVOLUTIONS = ("conv1", "conv2", "conv3", "conv4", "conv5")
LINEARS = ("classifier.1", "classifier.4", "classifier.6")  # dropout_fc_head's three nn.Linear
LAYERS = CONVOLUTIONS + LINEARS
"""The parameterised layers of the state_dict layout, in forward order; each has ``.weight`` and ``.bias``."""


def from_sequential(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ZF Net checkpoint in this module's layout: as it is when it already is, else renamed from a plain
    ``nn.Sequential`` (keys ``0.weight``, ``3.bias``, ... or nested ``features.0.weight``, ``classifier.1.bias``).

    The Sequential's parameterised layers are taken in the checkpoint's order (the order the modules were
    registered): five convolutions then three linear layers, each with a bias; what lies between them (ReLU,
    pools, dropout, flatten) has no parameters, so the Sequential must compute what ``ZFNet`` does (its
    layers are listed in docs/EXPORT.md): the names change, the answers do not.
    """
    if all(f"{layer}.weight" in state_dict for layer in LAYERS):
        return dict(state_dict)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        module, _, parameter = key.rpartition(".")
        layers.setdefault(module, {})[parameter] = value
    ranks = [layer.get("weight", torch.empty(0)).ndim for layer in layers.values()]
    convolutions, linears = ranks.count(4), ranks.count(2)
    if ranks != [4] * 5 + [2] * 3 or any(set(layer) != {"weight", "bias"} for layer in layers.values()):
        raise WeightsError(
            "zfnet weights are neither its own layout (conv1.weight ... classifier.6.bias, docs/EXPORT.md) nor a "
            "plain nn.Sequential of 5 convolutions then 3 linear layers, each with weight and bias: found "
            f"{convolutions} convolutions and {linears} linear layers among {len(layers)} modules "
            f"({', '.join(sorted(set(state_dict))[:4])}, ...)"
        )
    return {
        f"{own}.{parameter}": layer[parameter]
        for own, layer in zip(LAYERS, layers.values(), strict=True)
        for parameter in ("weight", "bias")
    }


def weights_variant(config: ZFNetConfig, state_dict: Mapping[str, torch.Tensor]) -> ZFNetConfig:
    """The convolution widths and hidden FC width of a checkpoint in this module's layout."""
    if not all(f"{layer}.weight" in state_dict for layer in LAYERS):
        return config  # the strict load names what is missing
    c1, c2, c3, c4, c5 = (int(state_dict[f"{conv}.weight"].shape[0]) for conv in CONVOLUTIONS)
    fc_width = int(state_dict["classifier.1.weight"].shape[0])
    return replace(config, conv_widths=(c1, c2, c3, c4, c5), fc_width=fc_width)


SMALL = ZFNetConfig(
    **small_config_fields(
        image_size=64,
        recipe=ClassifierRecipe(
            sgd=SGDRecipe(epochs=7, batch_size=64, lr=0.02, weight_decay=5e-4),
            # More scenes beat more epochs: 0.946 (4000 x 10) vs 0.974 (8000 x 5). 8000 x 7 scored 0.926 on
            # another CPU (hexagon vs circle): 12000 x 7 for margin (validation 0.998 / 0.996, seeds 0 / 1).
            train_scenes=12000,
            augment=functools.partial(flip_and_crop, pad=4),  # ZF Net kept AlexNet's augmentation
        ),
    ),
    conv_widths=(24, 48, 64, 64, 48),
    fc_width=256,
    dropout=0.2,  # as the small AlexNet: the paper's 0.5 starves 256-unit layers
)
FULL = ZFNetConfig(**full_config_fields())


def deconvnet_stages(model: ZFNet) -> tuple[Stage, ...]:
    """The five layers the paper visualises (figure 2), each with the max-pool that follows it, if any."""
    first, second, last = (Pool(*pool) for pool in _POOLS)
    return (
        Stage("conv1", model.conv1, first),
        Stage("conv2", model.conv2, second),
        Stage("conv3", model.conv3),
        Stage("conv4", model.conv4),
        Stage("conv5", model.conv5, last),
    )


def explain_graphs(model: nn.Module, config: ZFNetConfig, seed: int, labels: Sequence[str]) -> tuple[GraphSpec, ...]:
    if not isinstance(model, ZFNet):
        raise TypeError(f"zfnet explains a ZFNet, got {type(model).__name__}")
    return (explain_graph(model, deconvnet_stages(model), config, seed, labels, default=True),)


register_family(
    ClassifierFamily(
        name="zfnet",
        configs={"small": SMALL, "full": FULL},
        builder=ZFNet,
        extra_graphs=explain_graphs,
        weights_variant=weights_variant,
        weights_layout=from_sequential,
    )
)
