"""DCGAN family: generator/discriminator contracts, checkpoint loading, a smoke training run."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from export.families import get_family
from export.families.base import WeightsError
from export.families.dcgan import (
    FULL,
    SMALL,
    Dcgan,
    Discriminator,
    Generator,
    Judge,
    class_code,
    class_one_hot,
    judge_samples,
    train_gan,
    training_scenes,
)

TANH_SLACK = 1e-6

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


def test_small_generator_reads_its_shape_class_off_z() -> None:
    z = torch.randn(4096, SMALL.z_dim, generator=torch.Generator().manual_seed(0))
    codes = class_code(z, SMALL.classes)
    assert codes is not None and class_code(z, FULL.classes) is None
    assert torch.equal(class_one_hot(z, SMALL.classes), torch.nn.functional.one_hot(codes, SMALL.classes).float())
    # Under z ~ N(0, I) every class is equally likely.
    assert torch.bincount(codes, minlength=SMALL.classes).min() > 4096 / SMALL.classes * 0.8


def test_conditional_discriminator_scores_the_class_too() -> None:
    torch.manual_seed(0)
    discriminator = Discriminator(SMALL).eval()
    images = torch.randn(2, 3, SMALL.image_size, SMALL.image_size)
    with torch.no_grad():
        as_circles = discriminator(images, torch.tensor([0, 0]))
        as_rings = discriminator(images, torch.tensor([7, 7]))
    assert as_circles.shape == (2,) and not torch.allclose(as_circles, as_rings)
    with pytest.raises(ValueError, match="class-conditional"):
        discriminator(images)


def test_class_count_must_fit_in_z() -> None:
    with pytest.raises(ValueError, match="classes must be between 0 and z_dim"):
        replace(SMALL, z_dim=4)


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


def test_training_scenes_keep_plain_backgrounds_only() -> None:
    scenes = training_scenes(replace(SMALL, train_scenes=12), seed=0)
    assert len(scenes) == 12
    assert all(scene.caption.endswith("on a plain background") for scene in scenes)
    assert len(training_scenes(replace(SMALL, train_scenes=12, plain_backgrounds=False), seed=0)) == 12


def test_smoke_training_updates_both_nets_and_returns_eval_mode() -> None:
    torch.manual_seed(0)
    model = Dcgan(TINY)
    before = [p.clone() for p in model.parameters()]
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    trained = train_gan(model, TINY, real, torch.arange(8) % TINY.classes, seed=0)
    assert not trained.training
    changed = [not torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True)]
    assert all(changed)


def test_judge_counts_confident_samples_per_class() -> None:
    torch.manual_seed(0)
    judge = Judge(8).eval()
    verdict = judge_samples(judge, Generator(TINY).eval(), torch.randn(16, TINY.z_dim))
    assert 0.0 <= verdict.confident_fraction <= 1.0
    assert len(verdict.confident_per_class) == 8
    assert sum(verdict.confident_per_class) == round(verdict.confident_fraction * 16)
    assert verdict.accuracy is not None and 0.0 <= verdict.accuracy <= 1.0


@pytest.fixture(scope="module")
def generator_folder(small_repository: Path) -> Path:
    return small_repository / "dcgan_small"


def _report(folder: Path) -> dict:
    return json.loads((folder / "1" / "export_report.json").read_text())


def test_exported_generator_report_has_parity_and_an_honest_judge(generator_folder: Path) -> None:
    report = _report(generator_folder)
    assert report["task"] == "generate"
    assert report["parity"]["passed"]
    assert max(check["max_abs_diff"] for check in report["parity"]["checks"]) <= 1e-4
    details = report["quality"]["details"]
    assert report["quality"]["metric"] == "confident_fraction_every_class"
    assert details["judge_accuracy_real_held_out"] >= 0.95
    # ... and sure of real scenes, so that its confidence on generated ones means something.
    assert details["judge_confident_fraction_real_held_out"] >= 0.95
    # The judge is no pushover: an untrained generator's noise does not pass it.
    assert details["untrained_generator_confident_fraction"] < 0.7


def test_exported_generator_meets_the_quality_bar(generator_folder: Path) -> None:
    quality = _report(generator_folder)["quality"]
    assert quality["passed"] and quality["value"] >= 0.7
    assert quality["details"]["every_class_present"]
    # The shape a caller asks for through z is the shape the judge sees.
    assert quality["details"]["class_code_agreement"] >= 0.8


def test_exported_generator_serves_any_batch_in_output_range(generator_folder: Path) -> None:
    session = onnxruntime.InferenceSession(
        str(generator_folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx.checker.check_model(str(generator_folder / "1" / "model.onnx"))
    config = (generator_folder / "config.pbtxt").read_text()
    assert 'key: "output_range" value { string_value: "[-1.0, 1.0]" }' in config
    for batch in (1, 5):
        z = np.random.default_rng(batch).standard_normal((batch, SMALL.z_dim), dtype=np.float32)
        (images,) = session.run(["images"], {"z": z})
        assert images.shape == (batch, 3, SMALL.image_size, SMALL.image_size)
        # ONNX Runtime's tanh may round to 1 ulp past +-1 (1.0000001 was seen): float32 allows that much.
        assert images.min() >= -1.0 - TANH_SLACK and images.max() <= 1.0 + TANH_SLACK
