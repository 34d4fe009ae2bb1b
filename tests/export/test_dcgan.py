"""DCGAN family: generator/discriminator contracts, checkpoint loading, a smoke training run."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from export.families import get_family
from export.families.base import WeightsError
from export.families.dcgan import FULL, SMALL, Dcgan, Discriminator, Generator, Judge, judge_samples, train_gan

TINY = replace(SMALL, image_size=16, z_dim=8, width=4, train_steps=3, batch_size=4)


@pytest.mark.parametrize("config", [SMALL, FULL], ids=["small", "full"])
def test_generator_maps_z_to_images_in_tanh_range(config) -> None:
    torch.manual_seed(0)
    generator = Generator(config).eval()
    with torch.no_grad():
        images = generator(3 * torch.randn(2, config.z_dim))
    assert images.shape == (2, 3, config.image_size, config.image_size)
    assert images.abs().max() <= 1.0


def test_full_generator_is_the_papers_64x64_stack() -> None:
    generator = Generator(FULL)
    transposed = [m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in transposed] == [512, 256, 128, 64, 3]
    assert isinstance(generator.main[-1], torch.nn.Tanh)


def test_discriminator_gives_one_logit_per_image() -> None:
    assert Discriminator(FULL)(torch.randn(2, 3, 64, 64)).shape == (2,)


def test_image_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        replace(SMALL, image_size=48)


def test_full_checkpoint_round_trips_through_a_file(tmp_path: Path) -> None:
    family = get_family("dcgan")
    source = Generator(FULL)
    path = tmp_path / "netG.pth"
    torch.save(source.state_dict(), path)
    loaded = family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))
    z = torch.randn(2, FULL.z_dim)
    with torch.no_grad():
        assert torch.equal(loaded.generator(z), source.eval()(z))


def test_mismatched_checkpoint_is_refused_with_the_differences(tmp_path: Path) -> None:
    family = get_family("dcgan")
    path = tmp_path / "small.pth"
    torch.save(Generator(SMALL).state_dict(), path)
    with pytest.raises(WeightsError, match="weights do not fit dcgan_full generator: .*shape mismatches"):
        family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))
    torch.save(Discriminator(FULL).state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys"):
        family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))


def test_smoke_training_updates_both_nets_and_returns_eval_mode() -> None:
    torch.manual_seed(0)
    model = Dcgan(TINY)
    before = [p.clone() for p in model.parameters()]
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    trained = train_gan(model, TINY, real, seed=0)
    assert not trained.training
    changed = [not torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True)]
    assert all(changed)


def test_judge_counts_confident_samples_per_class() -> None:
    torch.manual_seed(0)
    judge = Judge(8).eval()
    fraction, counts = judge_samples(judge, Generator(TINY).eval(), torch.randn(16, TINY.z_dim))
    assert 0.0 <= fraction <= 1.0
    assert len(counts) == 8 and sum(counts) == round(fraction * 16)
