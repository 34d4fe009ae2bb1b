"""Full configs load torchvision state_dicts as they are (random-weight torchvision models, no downloads);
mismatched or unsafe checkpoints are refused with a message naming the problem."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from export.families import get_family
from export.families.base import WeightsError
from export.pipeline import read_state_dict
from tests.export.livening import liven

CASES = [
    pytest.param("alexnet", torchvision.models.alexnet, id="alexnet"),
    # transform_input off: torchvision's default for a GoogLeNet trained from scratch (and the full config's).
    pytest.param("googlenet", torchvision.models.googlenet, id="googlenet"),
    pytest.param("resnet", torchvision.models.resnet18, id="resnet18"),
    pytest.param("resnet", torchvision.models.resnet50, id="resnet50"),
    pytest.param("resnet", torchvision.models.resnet152, id="resnet152", marks=pytest.mark.slow),
    pytest.param("vgg", torchvision.models.vgg16, id="vgg16", marks=pytest.mark.slow),
    pytest.param("vgg", torchvision.models.vgg19_bn, id="vgg19_bn", marks=pytest.mark.slow),
]


def _load_full(family_name: str, state_dict: dict[str, torch.Tensor], **changes: object) -> nn.Module:
    family = get_family(family_name)
    config = replace(family.configs["full"], **changes)
    return family.load(family.build(config), config, state_dict).eval()


@pytest.mark.parametrize(("family_name", "constructor"), CASES)
def test_torchvision_state_dict_loads_into_the_full_config(
    family_name: str, constructor: Callable[..., nn.Module]
) -> None:
    reference = liven(constructor(weights=None))
    model = _load_full(family_name, reference.state_dict())
    # Same outputs on a small image (the adaptive pooling of all five accepts 64 x 64): cheaper than 224.
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the outputs depend on the image


def test_googlenet_transform_input_is_the_users_setting() -> None:
    """torchvision's ImageNet GoogLeNet (ported from TensorFlow) re-normalises its input: `--set
    transform_input=true` gives exactly that model; the default (off) answers differently with the same
    weights, so the flag is what decides (a state_dict does not record it)."""
    reference = liven(torchvision.models.googlenet(weights=None, transform_input=True))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(
            _load_full("googlenet", reference.state_dict(), transform_input=True)(images), expected, rtol=0, atol=0
        )
        assert not torch.allclose(_load_full("googlenet", reference.state_dict())(images), expected, atol=1e-3)


def test_a_checkpoint_fine_tuned_to_other_classes_loads_with_its_head() -> None:
    reference = liven(torchvision.models.resnet18(weights=None, num_classes=7))
    model = _load_full("resnet", reference.state_dict())
    assert model.fc.out_features == 7


def test_a_saved_torchvision_checkpoint_reads_back_with_weights_only(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    loaded = read_state_dict(tmp_path / "resnet18.pt", "resnet")
    assert loaded.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in reference.state_dict().items())


def test_zfnet_full_round_trips_its_own_layout(tmp_path: Path) -> None:
    family = get_family("zfnet")
    config = family.configs["full"]
    original = family.build(config).eval()
    path = tmp_path / "zfnet.pt"
    torch.save(original.state_dict(), path)
    loaded = family.load(family.build(config), config, read_state_dict(path, "zfnet")).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(images), original(images))


def test_mismatched_weights_name_the_difference(tmp_path: Path) -> None:
    resnet, vgg = get_family("resnet"), get_family("vgg")
    with pytest.raises(WeightsError, match=r"weights do not fit vgg \(small\): .*missing keys"):
        vgg.load(
            vgg.build(vgg.configs["small"]), vgg.configs["small"], resnet.build(resnet.configs["small"]).state_dict()
        )


def test_a_state_dict_wrapped_in_a_checkpoint_dict_is_accepted(tmp_path: Path) -> None:
    state = {"fc.weight": torch.zeros(2, 2)}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "c.pt")
    assert read_state_dict(tmp_path / "c.pt", "resnet").keys() == state.keys()


class Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"not a checkpoint", "cannot read weights"),
        (pickle.dumps({"w": Payload()}), "cannot read weights"),
    ],
)
def test_bad_weight_files_are_refused(content: bytes | None, message: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        read_state_dict(path, "resnet")


def test_a_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state_dict"):
        read_state_dict(tmp_path / "list.pt", "resnet")
