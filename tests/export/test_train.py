"""The shared training loops train in channels-last layout and hand the model back in the standard one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from export.train import SGDRecipe, channels_last, fit, fit_adam_one_cycle


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def weight_layouts(model: nn.Module) -> set[str]:
    """'nhwc' / 'nchw' for every 4-D weight of `model` (a 4-D tensor with 1x1 spatial size counts as both)."""
    layouts = set()
    for parameter in model.parameters():
        if parameter.ndim == 4:
            if parameter.is_contiguous(memory_format=torch.channels_last):
                layouts.add("nhwc")
            if parameter.is_contiguous():
                layouts.add("nchw")
    return layouts


def test_channels_last_holds_inside_the_block_and_restores_after_it_even_on_error() -> None:
    model = tiny_net()
    parameters = list(model.parameters())
    with pytest.raises(RuntimeError, match="stop"), channels_last(model):
        assert weight_layouts(model) == {"nhwc"}
        raise RuntimeError("stop")
    assert weight_layouts(model) == {"nchw"}
    # Optimisers hold the parameter objects: the layout change must not replace them.
    assert all(a is b for a, b in zip(parameters, model.parameters(), strict=True))


@pytest.mark.parametrize(("nhwc", "layout"), [(True, "nhwc"), (False, "nchw")])
def test_fit_trains_in_the_layout_asked_for_and_returns_the_standard_one(nhwc: bool, layout: str) -> None:
    model = tiny_net()
    before = model[0].weight.detach().clone()
    seen: list[set[str]] = []
    images, targets = torch.randn(8, 3, 6, 6), torch.randn(8, 4)

    def batches(_: int) -> Iterator[tuple[torch.Tensor, ...]]:
        yield images, targets

    def loss(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        seen.append(weight_layouts(net))
        return nn.functional.mse_loss(net(batch[0]), batch[1])

    trained = fit(model, batches, 1, loss, SGDRecipe(epochs=2, batch_size=8, lr=0.1), "test", nhwc=nhwc)
    assert seen == [{layout}, {layout}]
    assert weight_layouts(trained) == {"nchw"}
    assert not trained.training
    assert not torch.equal(trained[0].weight, before)


def test_adam_one_cycle_trains_in_channels_last_and_returns_the_standard_layout() -> None:
    model = tiny_net()
    before = model[0].weight.detach().clone()
    seen: list[set[str]] = []
    images, targets = torch.randn(8, 3, 6, 6), torch.randn(8, 4)

    def step_loss() -> torch.Tensor:
        seen.append(weight_layouts(model))
        return nn.functional.mse_loss(model(images), targets)

    trained = fit_adam_one_cycle(model, step_loss, 3, 0.01, "test")
    assert seen == [{"nhwc"}] * 3
    assert weight_layouts(trained) == {"nchw"}
    assert not torch.equal(trained[0].weight, before)
