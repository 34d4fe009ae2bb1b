"""export.averaging: the moving average of weights, and BatchNorm statistics measured for it."""

import pytest
import torch
from torch import nn

from export.averaging import WeightAverage, reestimate_batch_norm


def test_average_moves_by_one_minus_decay_towards_the_weights_and_is_copied_back() -> None:
    layer = nn.Linear(3, 2)
    start = [parameter.detach().clone() for parameter in layer.parameters()]
    average = WeightAverage(layer, decay=0.9)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(1.0)
    average.update(layer)
    average.copy_to(layer)
    for before, after in zip(start, layer.parameters(), strict=True):
        torch.testing.assert_close(after, before + 0.1)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_zero_one_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(2, 2), decay)


def test_batch_norm_statistics_become_the_plain_average_over_the_batches() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.1))
    norm = module[1]
    norm.running_mean.fill_(5.0)  # stale statistics, as averaged weights inherit them
    norm.running_var.fill_(9.0)
    batches = [torch.randn(32, 4) * (index + 1) for index in range(3)]
    returned = reestimate_batch_norm(module, batches)
    with torch.no_grad():
        activations = [module[0](batch) for batch in batches]
    expected_mean = torch.stack([a.mean(dim=0) for a in activations]).mean(dim=0)
    expected_var = torch.stack([a.var(dim=0, unbiased=True) for a in activations]).mean(dim=0)
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert returned is module and not module.training
    assert norm.momentum == 0.1
