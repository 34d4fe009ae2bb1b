"""Spatial Transformer Network (Jaderberg et al. 2015): task `warp`.

A localisation net regresses the 6 numbers of an affine theta (its last layer starts at the identity
transform, as the paper does); affine_grid turns theta into a sampling grid and grid_sample resamples
the input (bilinear, zero padding), and a classifier reads the warped image. The served graph returns
all three: the warped image, theta and the class logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.model_config import LABELS_FILE
from contract.names import IMAGES, LOGITS, PREPROCESSING_PARAMETER, THETA, WARP, WARPED
from contract.scenes import SHAPES, make_scenes, stack_images, stack_labels
from contract.tensors import TensorSpec
from export.data.tensors import DEFAULT_MEAN, DEFAULT_STD, evaluation_split, normalise
from export.families import register_family
from export.families.base import (
    FamilyConfig,
    GraphSpec,
    OnnxRunner,
    ParityCase,
    ParityCheck,
    Quality,
    load_state_dict_strict,
    preprocessing_parameter,
)
from export.families.narrow import narrow
from export.train import fit_adam_one_cycle, set_threads


@dataclass(frozen=True)
class StnConfig(FamilyConfig):
    """Shape and training budget of a spatial transformer classifier.

    image_size: square input side. loc_widths / head_widths: channels of the localisation net's and
    the classifier's conv stages (3x3 conv, BN, ReLU, 2x2 max-pool each). loc_hidden: the
    localisation net's fully connected layer before the 6 theta outputs.
    train_steps / batch_size / train_scenes / lr / theta_weight: Adam steps on distorted scenes; the
    loss is cross-entropy plus theta_weight x MSE(theta, inverse of the scene's known distortion).
    """

    image_size: int = 128
    loc_widths: tuple[int, ...] = (32, 64, 128)
    loc_hidden: int = 128
    head_widths: tuple[int, ...] = (64, 128, 256, 512)
    train_steps: int = 0
    batch_size: int = 32
    train_scenes: int = 4000
    lr: float = 3e-3
    theta_weight: float = 20.0


FULL = StnConfig(name="full", trainable=False, max_batch_size=32)
SMALL = StnConfig(
    name="small",
    trainable=True,
    max_batch_size=64,
    image_size=48,
    loc_widths=(8, 16, 32),
    loc_hidden=64,
    head_widths=(24, 48, 64),
    train_steps=1200,
)


def base_grid(side: int) -> torch.Tensor:
    """FP32 [side, side, 3]: (x, y, 1) of every output pixel centre in normalised coordinates.

    The grid generator is written out as `base_grid @ theta^T` (Jaderberg's sampling grid; the same
    numbers as `F.affine_grid(..., align_corners=False)`) because ONNX has AffineGrid only from opset
    20 and the exporter targets 17; the sampler is ONNX GridSample (opset 16).
    """
    coordinates = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
    y, x = torch.meshgrid(coordinates, coordinates, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def _conv_stages(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = width
    return nn.Sequential(*layers)


class SpatialTransformerNet(nn.Module):
    """images FP32 [B, 3, H, W] (preprocessed) -> warped FP32 [B, 3, H, W] (same space), theta FP32
    [B, 2, 3] (affine_grid convention: output -> input normalised coordinates), logits FP32 [B, C]."""

    base_grid: torch.Tensor  # (1, S * S, 3), a non-persistent buffer

    def __init__(self, config: StnConfig) -> None:
        super().__init__()
        side = config.image_size // 2 ** len(config.loc_widths)
        self.localisation = nn.Sequential(
            _conv_stages(config.loc_widths),
            nn.Flatten(),
            nn.Linear(config.loc_widths[-1] * side * side, config.loc_hidden),
            nn.ReLU(inplace=True),
        )
        self.to_theta = nn.Linear(config.loc_hidden, 6)
        nn.init.zeros_(self.to_theta.weight)
        with torch.no_grad():
            self.to_theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.side = config.image_size
        self.register_buffer("base_grid", base_grid(config.image_size).view(1, -1, 3), persistent=False)
        self.classifier = nn.Sequential(
            _conv_stages(config.head_widths),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(config.head_widths[-1], len(SHAPES)),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta = self.to_theta(self.localisation(images)).view(-1, 2, 3)
        grid = (self.base_grid @ theta.transpose(1, 2)).view(-1, self.side, self.side, 2)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped, theta, self.classifier(warped)


ACCURACY_THRESHOLD = 0.95
ERROR_REDUCTION_THRESHOLD = 0.30
EVAL_SCENES = 500


@dataclass(frozen=True)
class DistortedSet:
    """images: FP32 [N, 3, S, S] normalised distorted scenes; canonical: uint8 [N, S, S, 3] undistorted;
    labels: INT64 [N]; inverse_theta: FP32 [N, 2, 3], the warp that undoes each scene's distortion."""

    images: torch.Tensor
    canonical: np.ndarray
    labels: torch.Tensor
    inverse_theta: torch.Tensor


def distorted_set(count: int, size: int, seed: int, split: str | None = None) -> DistortedSet:
    """``count`` distorted scenes of ``seed``'s ``split`` stream (None: the plain stream, see make_scenes)."""
    scenes = make_scenes(count, size, seed, distort=True, split=split)
    homogeneous = np.concatenate(
        [np.stack([scene.theta for scene in scenes]), np.tile([[[0.0, 0.0, 1.0]]], (count, 1, 1))], axis=1
    )
    return DistortedSet(
        images=normalise(stack_images(scenes), DEFAULT_MEAN, DEFAULT_STD),
        canonical=stack_images(scenes, canonical=True),
        labels=torch.from_numpy(stack_labels(scenes)),
        inverse_theta=torch.from_numpy(np.linalg.inv(homogeneous)[:, :2].astype(np.float32)),
    )


def stn_loss(
    model: SpatialTransformerNet, images: torch.Tensor, labels: torch.Tensor, inverse_theta: torch.Tensor, weight: float
) -> torch.Tensor:
    """Cross-entropy on the warped image's logits plus `weight` x MSE(theta, the known inverse distortion).

    The auxiliary term is the documented departure from the paper's classification-only loss: with a
    budget of a few hundred steps it is what makes the warp undo the distortion, not merely help the
    classifier.
    """
    _, theta, logits = model(images)
    return F.cross_entropy(logits, labels) + weight * F.mse_loss(theta, inverse_theta)


def train_stn(model: SpatialTransformerNet, config: StnConfig, seed: int) -> SpatialTransformerNet:
    set_threads()
    torch.manual_seed(seed)
    data = distorted_set(config.train_scenes, config.image_size, seed, "train")
    rng = torch.Generator().manual_seed(seed)

    def step_loss() -> torch.Tensor:
        index = torch.randint(0, len(data.labels), (config.batch_size,), generator=rng)
        return stn_loss(model, data.images[index], data.labels[index], data.inverse_theta[index], config.theta_weight)

    return fit_adam_one_cycle(model, step_loss, config.train_steps, config.lr, f"stn_{config.name} train")


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Normalised FP32 [N, 3, S, S] -> FP32 [N, S, S, 3] pixel values in [0, 255] (the served inverse)."""
    mean = torch.tensor(DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULT_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).clamp(0, 255).permute(0, 2, 3, 1).numpy()


class StnFamily:
    """Registry entry: small trains on distorted scenes; full loads a `SpatialTransformerNet` state_dict."""

    name = "stn"
    task = WARP
    configs: Mapping[str, StnConfig] = {"small": SMALL, "full": FULL}

    def build(self, config: FamilyConfig) -> nn.Module:
        return SpatialTransformerNet(narrow(config, StnConfig, self.name))

    def train(self, model: nn.Module, config: FamilyConfig, seed: int) -> nn.Module:
        return train_stn(narrow(model, SpatialTransformerNet, self.name), narrow(config, StnConfig, self.name), seed)

    def load(self, model: nn.Module, config: FamilyConfig, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        return load_state_dict_strict(model, state_dict, f"stn_{config.name}")

    def evaluate(self, model: nn.Module, config: FamilyConfig, seed: int) -> Quality | None:
        """Accuracy on held-out distorted scenes, gated on the warp cutting pixel error to the canonical
        scene by at least ERROR_REDUCTION_THRESHOLD (the value is 0 when it does not)."""
        if not config.trainable:
            return None
        split = evaluation_split()
        data = distorted_set(EVAL_SCENES, narrow(config, StnConfig, self.name).image_size, seed, split)
        with torch.no_grad():
            warped, theta, logits = narrow(model, SpatialTransformerNet, self.name).eval()(data.images)
        accuracy = float((logits.argmax(dim=1) == data.labels).float().mean())
        canonical = data.canonical.astype(np.float32)
        error_before = float(np.abs(to_pixels(data.images) - canonical).mean())
        error_after = float(np.abs(to_pixels(warped) - canonical).mean())
        reduction = 1.0 - error_after / error_before
        return Quality(
            metric="distorted_accuracy_with_warp_gain",
            value=accuracy if reduction >= ERROR_REDUCTION_THRESHOLD else 0.0,
            threshold=ACCURACY_THRESHOLD,
            details={
                "accuracy_distorted": accuracy,
                "pixel_error_distorted": error_before,
                "pixel_error_warped": error_after,
                "pixel_error_reduction": reduction,
                "pixel_error_reduction_threshold": ERROR_REDUCTION_THRESHOLD,
                "theta_mse_to_inverse": float(F.mse_loss(theta, data.inverse_theta)),
                "held_out_scenes": EVAL_SCENES,
                "split": split,
                "loss": "cross-entropy + theta_weight x MSE(theta, known inverse distortion)",
            },
        )

    def graphs(self, model: nn.Module, config: FamilyConfig, seed: int) -> Sequence[GraphSpec]:
        stn_config = narrow(config, StnConfig, self.name)
        side = stn_config.image_size
        rng = np.random.default_rng(seed)
        real = distorted_set(4, side, seed, "test").images.numpy()
        return (
            GraphSpec(
                module=narrow(model, SpatialTransformerNet, self.name).eval(),
                inputs=(TensorSpec(IMAGES, (3, side, side)),),
                outputs=(
                    TensorSpec(WARPED, (3, side, side)),
                    TensorSpec(THETA, (2, 3)),
                    TensorSpec(LOGITS, (len(SHAPES),), label_filename=LABELS_FILE),
                ),
                parity_cases=(
                    ParityCase("real", {IMAGES: real}),
                    ParityCase("random", {IMAGES: rng.standard_normal((3, 3, side, side), np.float32)}),
                ),
                max_batch_size=stn_config.max_batch_size,
                task=self.task,
                parameters={PREPROCESSING_PARAMETER: preprocessing_parameter((side, side), DEFAULT_MEAN, DEFAULT_STD)},
                labels=SHAPES,
            ),
        )

    def system_parity(
        self, model: nn.Module, config: FamilyConfig, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        return ()


register_family(StnFamily())
