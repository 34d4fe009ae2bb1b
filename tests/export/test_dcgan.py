"""DCGAN family: generator/discriminator contracts, checkpoint loading, a smoke training run."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from contract import model_config
from contract.names import OUTPUT_RANGE_PARAMETER
from contract.scenes import stack_labels
from export.families import get_family
from export.families.base import WeightsError
from export.families.dcgan import (
    CONFIDENT_FRACTION,
    DIVERSITY_RATIO,
    FULL,
    SMALL,
    Dcgan,
    Discriminator,
    Generator,
    Judge,
    class_code,
    class_one_hot,
    generator_domain,
    judge_samples,
    mean_pairwise_distance,
    sample_quality,
    scene_tensor,
    train_gan,
    train_judge,
    training_scenes,
)
from export.train import SGDRecipe

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


def test_averaged_generator_carries_batch_norm_statistics_of_its_own_activations() -> None:
    """The last step's running statistics belong to other weights; the served ones must be re-measured."""
    config = replace(TINY, train_steps=20, average_decay=0.9)
    torch.manual_seed(0)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    generator = train_gan(Dcgan(config), config, real, torch.arange(8) % config.classes, seed=0).generator
    first_norm = generator.main[1]
    latent = torch.randn(4096, config.z_dim, generator=torch.Generator().manual_seed(1))
    conditioned = torch.cat([latent, class_one_hot(latent, config.classes)], dim=1)
    with torch.no_grad():
        activations = generator.main[0](conditioned[:, :, None, None])
    measured_var = activations.transpose(0, 1).flatten(1).var(dim=1)
    torch.testing.assert_close(first_norm.running_var, measured_var, rtol=0.1, atol=0.0)


def test_average_decay_must_lie_in_zero_one() -> None:
    with pytest.raises(ValueError, match="average_decay"):
        replace(SMALL, average_decay=1.0)


def test_judge_counts_confident_samples_per_class() -> None:
    torch.manual_seed(0)
    judge = Judge(8).eval()
    verdict = judge_samples(judge, Generator(TINY).eval(), torch.randn(16, TINY.z_dim))
    assert 0.0 <= verdict.confident_fraction <= 1.0
    assert len(verdict.confident_per_class) == 8
    assert sum(verdict.confident_per_class) == round(verdict.confident_fraction * 16)
    assert verdict.accuracy is not None and 0.0 <= verdict.accuracy <= 1.0


def test_mean_pairwise_distance_is_the_rms_pixel_difference_over_pairs() -> None:
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2), torch.ones(3, 2, 2)])
    # Pairs (0,1) and (0,2) differ by 1 in every pixel, (1,2) by 0: mean over the 3 pairs = 2/3.
    assert mean_pairwise_distance(images) == pytest.approx(2 / 3)
    assert mean_pairwise_distance(images[1:]) == 0.0 and mean_pairwise_distance(images[:1]) == 0.0


@pytest.fixture(scope="module")
def quick_judge() -> Judge:
    """A judge trained in seconds (the export's trains 12 epochs on 12,000 scenes and is surer)."""
    return train_judge(generator_domain(SMALL, 2000, seed=7), seed=7, recipe=SGDRecipe(epochs=2, batch_size=64, lr=0.1))


def _domain(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = generator_domain(SMALL, count, seed)
    return scene_tensor(scenes), torch.from_numpy(stack_labels(scenes))


def test_a_generator_of_eight_fixed_images_fails_the_diversity_bar_not_the_judge(quick_judge: Judge) -> None:
    pool, _ = _domain(256, seed=8)
    with torch.no_grad():
        surest = torch.softmax(quick_judge(pool), dim=1).argmax(dim=0)
    # Mode collapse: for each class the one real scene the judge is surest of, whatever else z says.
    z = torch.randn(512, SMALL.z_dim, generator=torch.Generator().manual_seed(9))
    codes = class_code(z, SMALL.classes)
    assert codes is not None
    real, real_classes = _domain(512, seed=10)
    collapsed = sample_quality(quick_judge, pool[surest][codes], codes, real, real_classes)
    as_real = sample_quality(quick_judge, real, real_classes, real, real_classes)
    # The judge is at least as sure of the collapsed samples as of real scenes: no confidence bar tells them
    # apart (with the export's judge both are ~1.0) ...
    assert collapsed.details["confident_fraction"] >= as_real.details["confident_fraction"]
    # ... the diversity bar does.
    missed = [bar.metric for bar in collapsed.bars if not bar.passed]
    assert not collapsed.passed and "diversity_ratio_worst_class" in missed
    assert collapsed.gates[0].value == 0.0


def test_real_scenes_as_samples_clear_the_diversity_bar(quick_judge: Judge) -> None:
    samples, codes = _domain(512, seed=12)
    real, real_classes = _domain(512, seed=10)
    diversity = sample_quality(quick_judge, samples, codes, real, real_classes).gates[0]
    assert diversity.metric == "diversity_ratio_worst_class" and diversity.value >= DIVERSITY_RATIO
    assert diversity.value == pytest.approx(1.0, abs=0.25)  # same distribution, same spread


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
    assert quality["passed"] and quality["value"] >= CONFIDENT_FRACTION
    assert quality["details"]["every_class_present"]
    (diversity,) = quality["gates"]
    assert diversity["metric"] == "diversity_ratio_worst_class" and diversity["value"] >= DIVERSITY_RATIO
    # The shape a caller asks for through z is the shape the judge sees.
    assert quality["details"]["class_code_agreement"] >= 0.8


def test_exported_generator_serves_any_batch_in_output_range(generator_folder: Path) -> None:
    session = onnxruntime.InferenceSession(
        str(generator_folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx.checker.check_model(str(generator_folder / "1" / "model.onnx"))
    config = model_config.read(generator_folder)
    assert model_config.parameters(config)[OUTPUT_RANGE_PARAMETER] == "[-1.0, 1.0]"
    for batch in (1, 5):
        z = np.random.default_rng(batch).standard_normal((batch, SMALL.z_dim), dtype=np.float32)
        (images,) = session.run(["images"], {"z": z})
        assert images.shape == (batch, 3, SMALL.image_size, SMALL.image_size)
        # ONNX Runtime's tanh may round to 1 ulp past +-1 (1.0000001 was seen): float32 allows that much.
        assert images.min() >= -1.0 - TANH_SLACK and images.max() <= 1.0 + TANH_SLACK
