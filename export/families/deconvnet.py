"""DeconvNet (Zeiler & Fergus 2013): project one strong activation of a layer back to pixel space.

For a chosen layer and channel the network keeps only that channel's strongest activation (every
other activation of the layer set to zero) and runs the layers backwards, as the paper's figure 1:
unpool by the forward pass's max-pooling switches, rectify, filter with the transposed filters of the
same convolution (``conv_transpose2d`` with the trained weights, no bias). Nothing is trained: the
DeconvNet reads the classifier's own weights.

The exported graph does the forward pass with switches and the deconvolution in one go, per row:
``images`` FP32 [B, 3, S, S], ``layer`` INT64 [B, 1] (1-based) and ``rank`` INT64 [B, 1] (0 = the
layer's strongest channel on that image) -> ``projection`` FP32 [B, 3, S, S] (the normalised input
space), ``channel`` INT64 [B, 1], ``activation`` FP32 [B, 1] and ``position`` INT64 [B, 2] (y, x on the
layer's map). One request's top-k channels are k rows of the same image, so they batch like any rows.

Class mode (input ``class`` INT64 [B, 1], -1 = off): the channels rank instead by their contribution to
that class's logit, the sum over the map of activation x gradient of the logit (export/families/
class_gradient.py); the chosen channel is then projected as above. The gradient runs down the same path
as the DeconvNet, with one difference at each ReLU: the gradient passes where the forward pass was
positive, the DeconvNet rectifies what arrives. Outputs beside the four above: ``contribution`` FP32
[B, 1] (0 in peak mode) and the classifier's ``logits`` (labels.txt names the classes). A config with
``explain_by_class`` off (full configs by default: the head is most of their weights) exports the peak mode
alone: no ``class`` input, no head, the four outputs above.

Unpooling adds the values of overlapping windows that chose the same switch (the transpose of max
pooling, as its gradient does); where one window chose a position it is exactly MaxUnpool2d.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.explain_layers import LAYERS_PARAMETER, ExplainedLayer
from contract.model_config import LABELS_FILE
from contract.names import (
    ACTIVATION,
    CHANNEL,
    CLASS,
    CONTRIBUTION,
    DEFAULT_PARAMETER,
    EXPLAIN,
    IMAGES,
    INPUT_RANGES_PARAMETER,
    LAYER,
    LOGITS,
    POSITION,
    PREPROCESSING_PARAMETER,
    PROJECTION,
    RANK,
)
from contract.tensors import TensorSpec
from export.families.base import (
    GraphSpec,
    ParityCase,
    Tolerance,
    input_ranges_parameter,
    pixel_range,
    square_preprocessing,
)
from export.families.class_gradient import ClassHead, class_head
from export.families.classifier import ClassifierConfig, held_out_inputs, logit_tolerance
from protos.inference import model_config_pb2 as mc

TASK = EXPLAIN
SUFFIX = "_explain"


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Stage:
    """One visualised layer: a convolution, its ReLU, and the max-pool after it (None: no pooling)."""

    name: str
    conv: nn.Conv2d
    pool: Pool | None = None


def features_explain_graphs(
    model: nn.Module, config: ClassifierConfig, seed: int, labels: Sequence[str]
) -> tuple[GraphSpec, ...]:
    """The explain graph of a classifier with torchvision's ``features`` layout (AlexNet, VGG)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no `features` Sequential to explain")
    return (explain_graph(model, stages_from_features(features), config, seed, labels),)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` in eval mode: the filter bank the DeconvNet transposes."""
    mean, variance = norm.running_mean, norm.running_var
    if mean is None or variance is None:
        raise ValueError("a batch norm without running statistics cannot be folded into its convolution")
    scale = norm.weight / torch.sqrt(variance + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    kernel, stride, padding = _geometry(conv)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, stride, padding)
    folded.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    folded.bias = nn.Parameter(((bias - mean) * scale + norm.bias).detach())
    return folded.eval()


def stages_from_features(features: nn.Sequential) -> tuple[Stage, ...]:
    """The stages (conv1, conv2, ...) of a torchvision-style ``features``: Conv2d [BatchNorm2d] ReLU, with a
    MaxPool2d after some. A batch norm is folded into its convolution (the same map in eval mode)."""
    stages: list[Stage] = []
    for module in features:
        if isinstance(module, nn.Conv2d):
            stages.append(Stage(f"conv{len(stages) + 1}", module))
        elif isinstance(module, nn.BatchNorm2d):
            stages[-1] = replace(stages[-1], conv=fold_batch_norm(stages[-1].conv, module))
        elif isinstance(module, nn.MaxPool2d) and module.dilation == 1 and not module.ceil_mode:
            kernel, stride, padding = (_side(value) for value in (module.kernel_size, module.stride, module.padding))
            stages[-1] = replace(stages[-1], pool=Pool(kernel, stride, padding))
        elif not isinstance(module, nn.ReLU):
            raise ValueError(f"the DeconvNet construction does not cover {module}")
    return tuple(stages)


def _side(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def _window(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def _geometry(conv: nn.Conv2d) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a square convolution with numeric padding."""
    if isinstance(conv.padding, str):
        raise ValueError(f"DeconvNet needs numeric padding, got {conv.padding!r}")
    return conv.kernel_size[0], conv.stride[0], conv.padding[0]


def explained_layers(stages: Sequence[Stage], image_size: int) -> tuple[ExplainedLayer, ...]:
    """Map sides and receptive fields of every stage's output (after its pooling) on a square image."""
    layers = []
    side, stride, offset, size = image_size, 1, 0, 1
    for stage in stages:
        operations = [_geometry(stage.conv)]
        if stage.pool is not None:
            operations.append((stage.pool.kernel, stage.pool.stride, stage.pool.padding))
        for kernel, step, padding in operations:
            side = _window(side, kernel, step, padding)
            offset -= padding * stride
            size += (kernel - 1) * stride
            stride *= step
        layers.append(ExplainedLayer(stage.name, stage.conv.out_channels, side, stride, offset, size))
    return tuple(layers)


def unpool(signal: torch.Tensor, switches: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Place each pooled value at its switch in a zero map shaped as ``like`` (the pre-pool map)."""
    flat = torch.zeros_like(like).flatten(2)
    return flat.scatter_add(2, switches.flatten(2), signal.flatten(2)).view_as(like)


def strongest(
    top: torch.Tensor, rank: torch.Tensor, contributions: torch.Tensor | None, by_class: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """The map holding only the peak of the ``rank``-th channel of ``top`` [B, C, H, W].

    Channels rank by their peak, or in the rows ``by_class`` [B, 1] by their ``contributions`` [B, C] (None in
    a graph without the class mode);
    ties by index (a count of channels ranked higher rather than a sort, so that ONNX Runtime and
    PyTorch break ties alike). Returns (map, channel [B, 1], activation [B, 1], flat position [B, 1]).
    """
    flat = top.flatten(2)
    peaks, positions = flat.max(2)
    scores = peaks if contributions is None or by_class is None else torch.where(by_class, contributions, peaks)
    index = torch.arange(scores.shape[1], device=top.device)
    beats = (scores.unsqueeze(1) > scores.unsqueeze(2)) | (
        (scores.unsqueeze(1) == scores.unsqueeze(2)) & (index.view(1, 1, -1) < index.view(1, -1, 1))
    )
    order = beats.sum(2)  # [B, C]: how many channels outrank each channel
    channel = (order == rank).float().argmax(1, keepdim=True)
    activation = peaks.gather(1, channel)
    position = positions.gather(1, channel)
    cells = flat.shape[2]
    kept = torch.zeros_like(flat).flatten(1).scatter(1, channel * cells + position, activation)
    return kept.view_as(top), channel, activation, position


class DeconvNet(nn.Module):
    """The forward pass with switches of ``stages`` and ``head``, and the DeconvNet attached to it (module doc);
    without a head, the peak mode alone (``classes`` not taken, four outputs)."""

    def __init__(self, stages: Sequence[Stage], head: ClassHead | None, image_size: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(stage.conv for stage in stages)
        self.head = head
        self.pools = tuple(stage.pool for stage in stages)
        self.geometries = tuple(_geometry(stage.conv) for stage in stages)
        self.output_paddings: list[int] = []  # per stage: what conv_transpose2d adds to land on the input's side
        self.sides: list[int] = []  # per stage: the side of its output map (after pooling)
        side = image_size
        for stage, (kernel, stride, padding) in zip(stages, self.geometries, strict=True):
            convolved = _window(side, kernel, stride, padding)
            self.output_paddings.append(side - ((convolved - 1) * stride - 2 * padding + kernel))
            pool = stage.pool
            side = convolved if pool is None else _window(convolved, pool.kernel, pool.stride, pool.padding)
            self.sides.append(side)

    def forward(
        self, images: torch.Tensor, layer: torch.Tensor, rank: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        rectified, switches, tops = [], [], []
        x = images
        for conv, pool in zip(self.convs, self.pools, strict=True):
            x = F.relu(conv(x))
            rectified.append(x)
            chosen = None
            if pool is not None:
                x, chosen = F.max_pool2d(x, pool.kernel, pool.stride, pool.padding, return_indices=True)
            switches.append(chosen)
            tops.append(x)
        gradient = logits = by_class = None
        if self.head is not None and classes is not None:
            logits, passed = self.head(tops[-1])
            gradient = self.head.gradient(passed, classes, tops[-1].shape)  # d logit[class] / d the layer's map
            by_class = classes >= 0
        signal = torch.zeros_like(tops[-1])
        channel = torch.zeros_like(layer)
        activation = torch.zeros_like(layer, dtype=images.dtype)
        contribution = torch.zeros_like(activation)
        position = torch.zeros_like(layer).expand(-1, 2)
        for index in reversed(range(len(tops))):
            is_layer = layer == index + 1
            top = tops[index]
            contributions = None if gradient is None else (top * gradient).sum((2, 3))
            kept, picked, value, flat = strongest(top, rank, contributions, by_class)
            signal = signal + kept * is_layer.view(-1, 1, 1, 1).to(kept.dtype)
            channel = torch.where(is_layer, picked, channel)
            activation = torch.where(is_layer, value, activation)
            if contributions is not None and by_class is not None:
                contribution = torch.where(is_layer & by_class, contributions.gather(1, picked), contribution)
            side = self.sides[index]
            position = torch.where(is_layer, torch.cat([flat // side, flat % side], 1), position)
            signal = self._down(index, signal, switches[index], rectified[index], rectify=True)
            if index > 0 and gradient is not None:
                gradient = self._down(index, gradient, switches[index], rectified[index], rectify=False)
        if logits is None:
            return signal, channel, activation, position
        return signal, channel, activation, position, contribution, logits

    def _down(
        self, index: int, signal: torch.Tensor, switches: torch.Tensor | None, rectified: torch.Tensor, rectify: bool
    ) -> torch.Tensor:
        """One layer backwards: unpool (if the layer pools), then at the ReLU rectify the signal (the DeconvNet)
        or pass it where the forward pass was positive (the gradient), then filter with the transposed weights."""
        if switches is not None:
            signal = unpool(signal, switches, rectified)
        signal = F.relu(signal) if rectify else signal * (rectified > 0).to(signal.dtype)
        _, stride, padding = self.geometries[index]
        weight = cast(nn.Conv2d, self.convs[index]).weight
        return F.conv_transpose2d(signal, weight, None, stride, padding, self.output_paddings[index])


def explain_graph(
    model: nn.Module,
    stages: Sequence[Stage],
    config: ClassifierConfig,
    seed: int,
    labels: Sequence[str],
    default: bool = False,
) -> GraphSpec:
    """The ``<family>_<config>_explain`` graph over ``stages`` and, with ``config.explain_by_class``, ``model``'s
    classifier head (the trained classifier's own modules; ``labels`` its classes); ``default``: the explain
    task's default model (ZF Net's, the paper's network).

    Parity runs on held-out scenes, two rows per layer (ranks 0 and 1) by peak and two by class, and on
    random images with layers, ranks and classes spread out.
    """
    image_size, mean, std = config.image_size, config.mean, config.std
    preprocessing = square_preprocessing((image_size, image_size), mean, std)
    layers = explained_layers(stages, image_size)
    by_class = config.explain_by_class
    network = DeconvNet(stages, class_head(model, layers[-1].side) if by_class else None, image_size).eval()
    classes = 0
    if network.head is not None:
        check_logits(network, model, image_size)
        classes = network.head.num_classes
    count = len(layers)
    rng = np.random.default_rng(seed)
    real_rows = np.repeat(held_out_inputs(count, preprocessing, seed), 2, axis=0)
    column = np.int64

    def case(name: str, images: np.ndarray, layer: Sequence[int], rank: Sequence[int], by: Sequence[int]) -> ParityCase:
        inputs = {
            IMAGES: images,
            LAYER: np.asarray(layer, column).reshape(-1, 1),
            RANK: np.asarray(rank, column).reshape(-1, 1),
        }
        return ParityCase(name, {**inputs, CLASS: np.asarray(by, column).reshape(-1, 1)} if by_class else inputs)

    real_layers, real_ranks = [i // 2 + 1 for i in range(2 * count)], [i % 2 for i in range(2 * count)]
    random_rows = 2 * count + 1
    peak_outputs = (
        TensorSpec(PROJECTION, (3, image_size, image_size)),
        TensorSpec(CHANNEL, (1,), mc.TYPE_INT64),
        TensorSpec(ACTIVATION, (1,)),
        TensorSpec(POSITION, (2,), mc.TYPE_INT64),
    )
    class_outputs = (TensorSpec(CONTRIBUTION, (1,)), TensorSpec(LOGITS, (classes,), label_filename=LABELS_FILE))
    ranges = {IMAGES: pixel_range(mean, std), **({CLASS: (-1, classes - 1)} if by_class else {})}
    return GraphSpec(
        module=network,
        inputs=(
            TensorSpec(IMAGES, (3, image_size, image_size)),
            TensorSpec(LAYER, (1,), mc.TYPE_INT64),
            TensorSpec(RANK, (1,), mc.TYPE_INT64),
            *((TensorSpec(CLASS, (1,), mc.TYPE_INT64),) if by_class else ()),
        ),
        outputs=peak_outputs + class_outputs if by_class else peak_outputs,
        tolerances={
            # Served as an 8-bit picture scaled to the row's largest value. Rounding can flip a ReLU near 0 or the
            # switch of an all-zero pooling window (the runtimes break such ties differently), and the projection
            # then differs locally: on a livened full AlexNet's noise images by 0.85% of the row's largest value
            # (0.013 of 1.54, 239 pixels). 1e-2 of it is 2.5 grey levels of the picture.
            PROJECTION: Tolerance(atol=1e-4, rtol=1e-3, row_rtol=1e-2),
            CHANNEL: Tolerance.exact(),
            ACTIVATION: Tolerance(atol=1e-4, rtol=1e-5),
            POSITION: Tolerance.exact(),
            **({CONTRIBUTION: contribution_tolerance(config), LOGITS: logit_tolerance(config)} if by_class else {}),
        },
        parity_cases=(
            case("real", real_rows, real_layers, real_ranks, [-1] * 2 * count),
            *(
                (case("real_by_class", real_rows, real_layers, real_ranks, [i % classes for i in range(2 * count)]),)
                if by_class
                else ()
            ),
            case(
                "random",
                rng.standard_normal((random_rows, 3, image_size, image_size), np.float32),
                [i % count + 1 for i in range(random_rows)],
                [i % 3 for i in range(random_rows)],
                [i % (classes + 1) - 1 for i in range(random_rows)],  # -1 (by peak) and every class
            ),
        ),
        max_batch_size=config.max_batch_size,
        task=TASK,
        suffix=SUFFIX,
        parameters={
            PREPROCESSING_PARAMETER: preprocessing.to_json(),
            LAYERS_PARAMETER: json.dumps([asdict(layer) for layer in layers]),
            # Any layer and rank is safe (no layer: a zero projection); images and classes are bounded.
            INPUT_RANGES_PARAMETER: input_ranges_parameter(ranges),
            **({DEFAULT_PARAMETER: "true"} if default else {}),
        },
        labels=tuple(labels) if by_class else (),
    )


def contribution_tolerance(config: ClassifierConfig) -> Tolerance:
    """Parity bound of a class-mode contribution: a sum over the whole map of activation x gradient, the gradient
    carrying the head's rounding (logit_tolerance). Small networks keep 1e-4 + 1e-3 relative; a full VGG-11 on
    livened weights differed by 2.8e-3, so full configs allow 1e-2 + 1e-3 relative."""
    return Tolerance(atol=1e-2 if config.name == "full" else 1e-4, rtol=1e-3)


def check_logits(network: DeconvNet, model: nn.Module, image_size: int) -> None:
    """The explain graph's forward pass must give ``model``'s own logits, else the class mode would explain
    another network (a head layout class_gradient.py does not describe): ValueError then."""
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    column = torch.full((2, 1), -1, dtype=torch.int64)
    with torch.no_grad():
        expected = model.eval()(images)
        ours = network(images, column, column, column)[-1]
    difference = float((ours - expected).abs().max())
    if difference > 1e-4 * (1 + float(expected.abs().max())):
        raise ValueError(
            f"{type(model).__name__}'s logits are not its classifier over its last explained layer (max difference "
            f"{difference:.3g}): Explain's class mode does not cover this network"
        )
