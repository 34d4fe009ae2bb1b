"""Spatial Transformer Network (Jaderberg et al. 2015): task `warp`, in the paper's three transforms.

A localisation net regresses the transform's parameters (its last layer starts at the identity transform,
as the paper does); a grid generator turns them into a sampling grid and grid_sample resamples the input
(bilinear, zero padding); an optional classifier reads the warped image. The transforms (section 3.1/4):
affine (6 numbers), projective (8, a homography with h33 = 1) and thin-plate spline (the input positions of
an n x n control-point grid). The served graph returns the warped image, theta and, with a head, the logits.

The small config trains all three: the affine net on affine distortions of the scenes, then a projective
and a thin-plate-spline net, each on distortions of its own kind, starting from the affine net's
localisation features and a copy of its classifier head, fine-tuned with them. The full config loads one
`SpatialTransformerNet` state_dict; its transform, input size, widths and class count (or no head at all)
are read from the checkpoint's shapes (docs/EXPORT_FAMILIES.md lists the layout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract import warps
from contract.model_config import LABELS_FILE
from contract.names import IMAGES, LOGITS, PREPROCESSING_PARAMETER, THETA, TRANSFORM_PARAMETER, WARP, WARPED
from contract.scenes import SHAPES, SPLITS, make_scenes, stack_images, stack_labels
from contract.tensors import TensorSpec
from export.data.tensors import DEFAULT_MEAN, DEFAULT_STD, evaluation_split, normalise
from export.families import register_family
from export.families.base import (
    Bar,
    FamilyConfig,
    GraphSpec,
    OnnxRunner,
    ParityCase,
    ParityCheck,
    Quality,
    WeightsError,
    load_state_dict_strict,
    preprocessing_parameter,
)
from export.families.layers import conv_stages
from export.families.narrow import narrow
from export.train import fit_adam_one_cycle, set_threads


@dataclass(frozen=True)
class StnConfig(FamilyConfig):
    """Shape and training budget of spatial transformers.

    image_size: square input side. loc_widths / head_widths: channels of the localisation net's and
    the classifier's conv stages (3x3 conv, BN, ReLU, 2x2 max-pool each). loc_hidden: the
    localisation net's fully connected layer before the transform's parameters. classes: the head's
    class count (0: no head, the localisation net and sampler alone). transform: the first (main) net's;
    variants: the further transforms the small config trains; control_grid: n of the thin-plate spline's
    n x n control points.
    train_steps / batch_size / train_scenes / lr / theta_weight: Adam steps of the main (affine) net on
    distorted scenes; the loss is cross-entropy plus theta_weight x MSE(theta, inverse of the scene's known
    distortion) plus photometric_weight x mean |warped - canonical| (normalised pixels). variant_steps /
    variant_scenes / variant_lr / grid_weight: each further variant's steps and training scenes, the loss
    then being cross-entropy through its copy of the head plus grid_weight x MSE(its sampling grid, the known
    inverse's) plus the same photometric term.
    """

    image_size: int = 128
    loc_widths: tuple[int, ...] = (32, 64, 128)
    loc_hidden: int = 128
    head_widths: tuple[int, ...] = (64, 128, 256, 512)
    classes: int = len(SHAPES)
    transform: str = "affine"
    variants: tuple[str, ...] = ()
    control_grid: int = 4
    train_steps: int = 0
    batch_size: int = 32
    train_scenes: int = 4000
    lr: float = 3e-3
    theta_weight: float = 20.0
    variant_steps: int = 0
    variant_scenes: int = 2000
    variant_lr: float = 2e-3
    grid_weight: float = 200.0
    photometric_weight: float = 10.0


FULL = StnConfig(name="full", trainable=False, max_batch_size=32)
SMALL = StnConfig(
    name="small",
    trainable=True,
    max_batch_size=64,
    image_size=48,
    loc_widths=(8, 16, 32),
    loc_hidden=64,
    head_widths=(24, 48, 64),
    train_steps=1500,
    variants=("projective", "tps"),
    variant_steps=300,
)


def base_grid(side: int) -> torch.Tensor:
    """FP32 [side * side, 3]: (x, y, 1) of every output pixel centre in normalised coordinates.

    The grid generator is written out as `base_grid @ theta^T` (Jaderberg's sampling grid; the same
    numbers as `F.affine_grid(..., align_corners=False)`) because ONNX has AffineGrid only from opset
    20 and the exporter targets 17; the sampler is ONNX GridSample (opset 16).
    """
    centres = torch.from_numpy(warps.pixel_centres(side, side)).float()
    return torch.cat([centres, torch.ones(len(centres), 1)], dim=1)


class GridGenerator(nn.Module):
    """One transform: parameters (the localisation net's outputs) -> theta (the served form) -> sampling grid.

    identity: the parameters of the identity transform (the localisation net's initial bias).
    """

    transform: str
    identity: tuple[float, ...]

    def theta(self, parameters: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        """FP32 [B, S, S, 2]: input (x, y) of every output pixel."""
        raise NotImplementedError


class AffineGrid(GridGenerator):
    """theta FP32 [B, 2, 3] (affine_grid convention: output -> input normalised coordinates)."""

    transform = "affine"
    identity: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    base: torch.Tensor  # (1, S * S, 3), a non-persistent buffer

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side
        self.register_buffer("base", base_grid(side).unsqueeze(0), persistent=False)

    def theta(self, parameters: torch.Tensor) -> torch.Tensor:
        return parameters.view(-1, 2, 3)

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.base @ theta.transpose(1, 2)).view(-1, self.side, self.side, 2)


class ProjectiveGrid(AffineGrid):
    """theta FP32 [B, 3, 3]: a homography with h33 = 1; x_in = (theta @ [x, y, 1]) / its third row."""

    transform = "projective"
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

    def theta(self, parameters: torch.Tensor) -> torch.Tensor:
        return torch.cat([parameters, torch.ones_like(parameters[:, :1])], dim=1).view(-1, 3, 3)

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        mapped = self.base @ theta.transpose(1, 2)
        return (mapped[..., :2] / mapped[..., 2:]).view(-1, self.side, self.side, 2)


class TpsGrid(GridGenerator):
    """theta FP32 [B, K, 2]: the input (x, y) of each of the K = n x n control points (warps.control_grid).

    The thin-plate spline through them is one matmul with a fixed [S * S, K] matrix (warps.tps_matrix):
    Bookstein's linear system is solved once, at construction, not in the graph.
    """

    transform = "tps"
    matrix: torch.Tensor  # (1, S * S, K), a non-persistent buffer

    def __init__(self, side: int, grid: int) -> None:
        super().__init__()
        self.side = side
        self.identity = tuple(float(v) for v in warps.control_grid(grid).reshape(-1))
        matrix = warps.tps_matrix(warps.pixel_centres(side, side), grid)
        self.register_buffer("matrix", torch.from_numpy(matrix).float().unsqueeze(0), persistent=False)

    def theta(self, parameters: torch.Tensor) -> torch.Tensor:
        return parameters.view(-1, len(self.identity) // 2, 2)

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.matrix @ theta).view(-1, self.side, self.side, 2)


def grid_generator(config: StnConfig) -> GridGenerator:
    """The grid generator of `config.transform` at `config.image_size`."""
    if config.transform == "affine":
        return AffineGrid(config.image_size)
    if config.transform == "projective":
        return ProjectiveGrid(config.image_size)
    if config.transform == "tps":
        return TpsGrid(config.image_size, config.control_grid)
    raise ValueError(f"unknown transform {config.transform!r}; use one of {warps.TRANSFORMS}")


class SpatialTransformerNet(nn.Module):
    """images FP32 [B, 3, S, S] (preprocessed) -> warped FP32 [B, 3, S, S] (same space), theta (the
    transform's shape, see the GridGenerator subclasses) and, with a head, logits FP32 [B, classes]."""

    def __init__(self, config: StnConfig) -> None:
        super().__init__()
        self.config = config
        side = config.image_size // 2 ** len(config.loc_widths)
        self.localisation = nn.Sequential(
            nn.Sequential(*conv_stages(config.loc_widths)),
            nn.Flatten(),
            nn.Linear(config.loc_widths[-1] * side * side, config.loc_hidden),
            nn.ReLU(inplace=True),
        )
        self.sampler = grid_generator(config)
        self.to_theta = nn.Linear(config.loc_hidden, len(self.sampler.identity))
        nn.init.zeros_(self.to_theta.weight)
        with torch.no_grad():
            self.to_theta.bias.copy_(torch.tensor(self.sampler.identity))
        self.classifier: nn.Module | None = None
        if config.classes:
            self.classifier = nn.Sequential(
                nn.Sequential(*conv_stages(config.head_widths)),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(config.head_widths[-1], config.classes),
            )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        theta = self.sampler.theta(self.to_theta(self.localisation(images)))
        grid = self.sampler.grid(theta)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.classifier is None:
            return warped, theta
        return warped, theta, self.classifier(warped)


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], base: StnConfig) -> StnConfig:
    """The architecture a `SpatialTransformerNet` state_dict was saved from: conv widths, hidden size, class
    count (0 without `classifier.*` keys), transform (6 outputs: affine, 8: projective, 2 n^2 with n >= 3:
    thin-plate spline) and input side (from the localisation net's flattened features: side / 2^stages
    squared per channel). WeightsError naming what is missing or does not fit."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise WeightsError(f"weights do not fit stn_{base.name}: no {key!r} (a SpatialTransformerNet state_dict?)")
        return tuple(state_dict[key].shape)

    def widths(prefix: str) -> tuple[int, ...]:
        found: list[int] = []
        while f"{prefix}.{4 * len(found)}.weight" in state_dict:
            found.append(shape(f"{prefix}.{4 * len(found)}.weight")[0])
        return tuple(found)

    loc_widths = widths("localisation.0")
    if not loc_widths:
        raise WeightsError(f"weights do not fit stn_{base.name}: no localisation conv stages (localisation.0.0.weight)")
    hidden, features = shape("localisation.2.weight")
    reduced = math.isqrt(features // loc_widths[-1])
    if reduced < 1 or reduced * reduced * loc_widths[-1] != features:
        raise WeightsError(
            f"weights do not fit stn_{base.name}: localisation.2 reads {features} features, not "
            f"{loc_widths[-1]} channels x a square map"
        )
    outputs = shape("to_theta.weight")[0]
    grid = math.isqrt(outputs // 2)
    if outputs in (6, 8):
        transform = "affine" if outputs == 6 else "projective"
    elif outputs % 2 == 0 and grid >= 3 and 2 * grid * grid == outputs:
        transform = "tps"
    else:
        raise WeightsError(
            f"weights do not fit stn_{base.name}: to_theta has {outputs} outputs; 6 (affine), 8 (projective) "
            "or 2 n^2 with n >= 3 (thin-plate spline on n x n control points)"
        )
    head = widths("classifier.0")
    classes = shape("classifier.3.weight")[0] if head else 0
    return replace(
        base,
        image_size=reduced * 2 ** len(loc_widths),
        loc_widths=loc_widths,
        loc_hidden=hidden,
        head_widths=head or base.head_widths,
        classes=classes,
        transform=transform,
        control_grid=grid if transform == "tps" else base.control_grid,
    )


#: The served (affine) net's accuracy bar; each further variant's, on held-out scenes of its own distortions
#: (the thin-plate spline's worst seed scores 0.962, so the variants keep 0.95).
MAIN_ACCURACY_THRESHOLD = 0.97
ACCURACY_THRESHOLD = 0.95
ERROR_REDUCTION_THRESHOLD = 0.30
EVAL_SCENES = 500


@dataclass(frozen=True)
class DistortedSet:
    """images: FP32 [N, 3, S, S] normalised distorted scenes; canonical: uint8 [N, S, S, 3] undistorted;
    labels: INT64 [N]; inverse_theta: FP32 [N, ...], the theta (its transform's shape) that undoes each
    scene's distortion."""

    images: torch.Tensor
    canonical: np.ndarray
    labels: torch.Tensor
    inverse_theta: torch.Tensor

    def rows(self, index: torch.Tensor) -> DistortedSet:
        """The scenes at `index` (INT64 [n]): one training batch."""
        return DistortedSet(
            self.images[index], self.canonical[index.numpy()], self.labels[index], self.inverse_theta[index]
        )


def distorted_set(count: int, size: int, seed: int, split: str | None = None) -> DistortedSet:
    """``count`` affinely distorted scenes of ``seed``'s ``split`` stream (None: the plain stream, see make_scenes)."""
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


def variant_set(transform: str, count: int, size: int, seed: int, split: str, grid: int) -> DistortedSet:
    """``count`` scenes of ``split`` distorted by random `transform`s (projective or tps, contract.warps),
    drawn from their own stream of ``seed`` (independent of the scenes' and of the other transform's)."""
    if transform == "affine":
        return distorted_set(count, size, seed, split)
    scenes = make_scenes(count, size, seed, split=split)
    rng = np.random.default_rng([seed, SPLITS.index(split), warps.TRANSFORMS.index(transform)])
    draw = warps.distorter(transform, grid)
    distortions = [draw(rng, size) for _ in scenes]
    images = np.stack([warps.distort(scene.image, d) for scene, d in zip(scenes, distortions, strict=True)])
    return DistortedSet(
        images=normalise(images, DEFAULT_MEAN, DEFAULT_STD),
        canonical=stack_images(scenes),
        labels=torch.from_numpy(stack_labels(scenes)),
        inverse_theta=torch.from_numpy(np.stack([d.inverse for d in distortions]).astype(np.float32)),
    )


def photometric_error(warped: torch.Tensor, batch: DistortedSet) -> torch.Tensor:
    """Mean |warped - canonical| in normalised pixels: what the pixel error gate measures, as a loss term."""
    return F.l1_loss(warped, normalise(batch.canonical, DEFAULT_MEAN, DEFAULT_STD))


def stn_loss(model: SpatialTransformerNet, batch: DistortedSet, config: StnConfig) -> torch.Tensor:
    """Cross-entropy on the warped image's logits plus theta_weight x MSE(theta, the known inverse distortion)
    plus photometric_weight x photometric_error.

    The auxiliary terms are the documented departure from the paper's classification-only loss: with a
    budget of a few hundred steps they are what makes the warp undo the distortion, not merely help the
    classifier.
    """
    warped, theta, logits = model(batch.images)
    return (
        F.cross_entropy(logits, batch.labels)
        + config.theta_weight * F.mse_loss(theta, batch.inverse_theta)
        + config.photometric_weight * photometric_error(warped, batch)
    )


def variant_loss(model: SpatialTransformerNet, batch: DistortedSet, config: StnConfig) -> torch.Tensor:
    """Cross-entropy through the head, plus grid_weight x MSE between the sampling grid and the known
    inverse's, plus photometric_weight x photometric_error.

    On the grid rather than on theta: a homography's entries differ in scale by orders of magnitude, the
    pixels they move do not. The photometric term because with the grid term alone the thin-plate-spline
    net learnt half of each displacement (regression slope 0.5: -31% pixel error, the known inverse -64%);
    the grid term keeps the warp on the known inverse where the pixels do not tell.
    """
    warped, theta, logits = model(batch.images)
    grid = model.sampler.grid
    return (
        F.cross_entropy(logits, batch.labels)
        + config.grid_weight * F.mse_loss(grid(theta), grid(batch.inverse_theta))
        + config.photometric_weight * photometric_error(warped, batch)
    )


LossFunction = Callable[[SpatialTransformerNet, DistortedSet, StnConfig], torch.Tensor]


def _fit(
    model: SpatialTransformerNet,
    data: DistortedSet,
    loss: LossFunction,
    steps: int,
    lr: float,
    config: StnConfig,
    seed: int,
) -> SpatialTransformerNet:
    """Adam one-cycle on random batches of `data`, updating all of `model`."""
    rng = torch.Generator().manual_seed(seed)

    def step_loss() -> torch.Tensor:
        return loss(model, data.rows(torch.randint(0, len(data.labels), (config.batch_size,), generator=rng)), config)

    return fit_adam_one_cycle(model, step_loss, steps, lr, f"stn_{config.name} {model.config.transform}")


def train_stn(model: SpatialTransformerNet, config: StnConfig, seed: int) -> SpatialTransformerNet:
    set_threads()
    torch.manual_seed(seed)
    data = distorted_set(config.train_scenes, config.image_size, seed, "train")
    return _fit(model, data, stn_loss, config.train_steps, config.lr, config, seed)


def train_variant(main: SpatialTransformerNet, config: StnConfig, transform: str, seed: int) -> SpatialTransformerNet:
    """A `transform` net that starts from copies of `main`'s localisation features and classifier head and a
    fresh identity-initialised parameter layer, and trains all of them on `transform` distortions of the
    training scenes (`main` itself is left as it is). The head is fine-tuned, not frozen: the variants'
    distortions lose more of the frame than the affine ones, and the affine head read them at 0.95-0.96."""
    set_threads()
    torch.manual_seed(seed)
    model = SpatialTransformerNet(replace(config, transform=transform))
    model.localisation.load_state_dict(main.localisation.state_dict())
    if model.classifier is not None and main.classifier is not None:
        model.classifier.load_state_dict(main.classifier.state_dict())
    data = variant_set(transform, config.variant_scenes, config.image_size, seed, "train", config.control_grid)
    return _fit(model, data, variant_loss, config.variant_steps, config.variant_lr, config, seed)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """Normalised FP32 [N, 3, S, S] -> FP32 [N, S, S, 3] pixel values in [0, 255] (the served inverse)."""
    mean = torch.tensor(DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULT_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).clamp(0, 255).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class WarpQuality:
    """One net's figures on held-out scenes distorted by its own transform."""

    accuracy: float
    error_before: float
    error_after: float
    theta_mse: float

    @property
    def reduction(self) -> float:
        return 1.0 - self.error_after / self.error_before


def measure_warp(net: SpatialTransformerNet, data: DistortedSet) -> WarpQuality:
    """Accuracy of the head on the warped scenes and the mean pixel error to the canonical scenes before and
    after the warp."""
    with torch.no_grad():
        warped, theta, logits = net.eval()(data.images)
    canonical = data.canonical.astype(np.float32)
    return WarpQuality(
        accuracy=float((logits.argmax(dim=1) == data.labels).float().mean()),
        error_before=float(np.abs(to_pixels(data.images) - canonical).mean()),
        error_after=float(np.abs(to_pixels(warped) - canonical).mean()),
        theta_mse=float(F.mse_loss(theta, data.inverse_theta)),
    )


def variant_bars(transform: str, quality: WarpQuality) -> tuple[Bar, Bar]:
    """A variant's two gates: accuracy on its distortions, and the pixel error its warp removes."""
    return (
        Bar(f"{transform}_distorted_accuracy", quality.accuracy, ACCURACY_THRESHOLD),
        Bar(f"{transform}_pixel_error_reduction", quality.reduction, ERROR_REDUCTION_THRESHOLD),
    )


class StnFamily:
    """Registry entry: small trains an affine, a projective and a thin-plate-spline net on distorted scenes
    (models stn_small, stn_small_projective, stn_small_tps); full loads one `SpatialTransformerNet`
    state_dict of any transform, size and class count (model stn_full)."""

    name = "stn"
    task = WARP
    configs: Mapping[str, StnConfig] = {"small": SMALL, "full": FULL}

    def build(self, config: FamilyConfig) -> nn.Module:
        """An nn.ModuleDict transform -> SpatialTransformerNet; the first entry is the main model."""
        stn_config = narrow(config, StnConfig, self.name)
        return nn.ModuleDict({stn_config.transform: SpatialTransformerNet(stn_config)})

    def train(self, model: nn.Module, config: FamilyConfig, seed: int) -> nn.Module:
        stn_config = narrow(config, StnConfig, self.name)
        main = train_stn(self._main(model), stn_config, seed)
        variants = {kind: train_variant(main, stn_config, kind, seed) for kind in stn_config.variants}
        return nn.ModuleDict({stn_config.transform: main, **variants})

    def load(self, model: nn.Module, config: FamilyConfig, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The checkpoint's own architecture (config_from_state_dict), loaded strictly."""
        found = config_from_state_dict(state_dict, narrow(config, StnConfig, self.name))
        net = load_state_dict_strict(SpatialTransformerNet(found), state_dict, f"stn_{config.name}")
        return nn.ModuleDict({found.transform: net})

    def _main(self, model: nn.Module) -> SpatialTransformerNet:
        return narrow(next(iter(narrow(model, nn.ModuleDict, self.name).values())), SpatialTransformerNet, self.name)

    def evaluate(self, model: nn.Module, config: FamilyConfig, seed: int) -> Quality | None:
        """Accuracy on held-out distorted scenes, gated on the warp cutting pixel error to the canonical
        scene by at least ERROR_REDUCTION_THRESHOLD (the value is 0 when it does not); each further
        variant, on held-out scenes of its own distortions, gated on its accuracy and its error reduction."""
        if not config.trainable:
            return None
        stn_config = narrow(config, StnConfig, self.name)
        split = evaluation_split()
        nets = narrow(model, nn.ModuleDict, self.name)
        measured = {
            kind: measure_warp(
                narrow(net, SpatialTransformerNet, self.name),
                variant_set(kind, EVAL_SCENES, stn_config.image_size, seed, split, stn_config.control_grid),
            )
            for kind, net in nets.items()
        }
        main = measured[stn_config.transform]
        return Quality(
            metric="distorted_accuracy_with_warp_gain",
            value=main.accuracy if main.reduction >= ERROR_REDUCTION_THRESHOLD else 0.0,
            threshold=MAIN_ACCURACY_THRESHOLD,
            gates=tuple(bar for kind in stn_config.variants for bar in variant_bars(kind, measured[kind])),
            details={
                "accuracy_distorted": main.accuracy,
                "pixel_error_distorted": main.error_before,
                "pixel_error_warped": main.error_after,
                "pixel_error_reduction": main.reduction,
                "pixel_error_reduction_threshold": ERROR_REDUCTION_THRESHOLD,
                "theta_mse_to_inverse": main.theta_mse,
                "variants": {
                    kind: {
                        "accuracy_distorted": measured[kind].accuracy,
                        "pixel_error_distorted": measured[kind].error_before,
                        "pixel_error_warped": measured[kind].error_after,
                        "pixel_error_reduction": measured[kind].reduction,
                        "theta_mse_to_inverse": measured[kind].theta_mse,
                    }
                    for kind in stn_config.variants
                },
                "held_out_scenes": EVAL_SCENES,
                "split": split,
                "loss": "cross-entropy + theta_weight x MSE(theta, known inverse distortion) + photometric_weight x "
                "mean |warped - canonical|; variants: cross-entropy through a fine-tuned copy of the affine net's "
                "head + grid_weight x MSE(grid, known inverse's) + the same photometric term",
            },
        )

    def graphs(self, model: nn.Module, config: FamilyConfig, seed: int) -> Sequence[GraphSpec]:
        """One model folder per net: the main one as stn_<config>, the others suffixed with their transform."""
        nets = narrow(model, nn.ModuleDict, self.name)
        return tuple(
            self._graph(narrow(net, SpatialTransformerNet, self.name), "" if index == 0 else f"_{kind}", seed)
            for index, (kind, net) in enumerate(nets.items())
        )

    def _graph(self, net: SpatialTransformerNet, suffix: str, seed: int) -> GraphSpec:
        config = net.config
        side = config.image_size
        rng = np.random.default_rng(seed)
        real = variant_set(config.transform, 4, side, seed, "test", config.control_grid).images.numpy()
        theta_dims = tuple(net.sampler.theta(torch.zeros(1, len(net.sampler.identity))).shape[1:])
        named = config.trainable and config.classes == len(SHAPES)  # trained here on the shapes
        head = (
            (TensorSpec(LOGITS, (config.classes,), label_filename=LABELS_FILE if named else ""),)
            if config.classes
            else ()
        )
        return GraphSpec(
            module=net.eval(),
            inputs=(TensorSpec(IMAGES, (3, side, side)),),
            outputs=(TensorSpec(WARPED, (3, side, side)), TensorSpec(THETA, theta_dims), *head),
            parity_cases=(
                ParityCase("real", {IMAGES: real}),
                ParityCase("random", {IMAGES: rng.standard_normal((3, 3, side, side), np.float32)}),
            ),
            max_batch_size=config.max_batch_size,
            task=self.task,
            suffix=suffix,
            parameters={
                PREPROCESSING_PARAMETER: preprocessing_parameter((side, side), DEFAULT_MEAN, DEFAULT_STD),
                TRANSFORM_PARAMETER: config.transform,
            },
            labels=SHAPES if named else None,
        )

    def system_parity(
        self, model: nn.Module, config: FamilyConfig, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        return ()


register_family(StnFamily())
