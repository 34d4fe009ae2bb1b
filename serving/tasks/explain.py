"""Explain: an image, a layer and k (and optionally a class) -> the DeconvNet projections of the layer's
k strongest channels, or of the k channels contributing most to the class's score.

Model contract (docs/MODEL_REPOSITORY.md, export/families/deconvnet.py): `images` FP32 [B, 3, H, W],
`layer` INT64 [B, 1] (1-based), `rank` INT64 [B, 1] (0 = strongest channel), `class` INT64 [B, 1]
(-1 = rank by peak activation) -> `projection` FP32 [B, 3, H, W], `channel` INT64 [B, 1], `activation`
FP32 [B, 1], `position` INT64 [B, 2] (y, x on the layer's map), `contribution` FP32 [B, 1] and `logits`
FP32 [B, classes] (labels.txt). The parameter `explain_layers` lists the layers: name, channels, map
side and receptive field (stride, offset, size). A graph without the class mode (exported before it, or
a full config without it) has neither `class` nor the last two outputs: it still serves the peak mode,
and a class is refused naming that.

A request's k channels are k rows of each image (ranks 0..k-1) in one submission, so they batch
with other requests' rows; each row recomputes the image's forward pass, which is cheaper than a
second round trip through the batcher to learn the ranking first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.explain_layers import LAYERS_PARAMETER, ExplainedLayer
from contract.names import ACTIVATION, CHANNEL, CLASS, CONTRIBUTION, IMAGES, LAYER, LOGITS, POSITION, PROJECTION, RANK
from contract.ranking import softmax
from contract.tensors import TensorSpec
from serving.deferred import DeferredRows
from serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from serving.images import ImageInput, ImageLimits, Preprocessing, encode_png, from_range
from serving.tasks.classify import Prediction, label_of
from serving.tasks.common import TensorModel, json_parameter, prepare_images
from serving.tasks.offload import run_image_work

#: Channels per image when the request says 0: the paper's figure 2 shows the top 9.
DEFAULT_TOP_K = 9
#: Projections (images x channels) one request may ask for: each is a forward and a backward pass.
MAX_PROJECTIONS = 256
#: Labels an unknown-class error lists before "...".
LISTED_LABELS = 12
#: The `class` input's value for "rank by peak activation".
BY_PEAK = -1

ClassChoice = str | int
"""A class to explain: its label (a line of labels.txt) or its 0-based index."""


@dataclass(frozen=True)
class ChannelProjection:
    channel: int
    activation: float
    contribution: float  # class mode: the channel's activation x gradient of the class's logit, summed; else 0
    png: bytes  # the projection at the model's input size, grey = 0, scaled by its largest magnitude
    receptive_field: tuple[float, float, float, float]  # x1, y1, x2, y2 in the model's input pixels


@dataclass(frozen=True)
class Explanation:
    layer: str
    channels: tuple[ChannelProjection, ...]  # strongest (or most contributing) first
    explained_class: Prediction | None  # class mode: the class and its softmax probability on the image


def layers_from(parameters: Mapping[str, str], model: str) -> tuple[ExplainedLayer, ...]:
    """Parse the `explain_layers` parameter; Unavailable naming the model when it is missing or broken."""
    value = json_parameter(parameters, LAYERS_PARAMETER, model)
    try:
        if not isinstance(value, list) or not value:
            raise TypeError
        layers = tuple(
            ExplainedLayer(
                name=str(entry["name"]),
                **{key: int(entry[key]) for key in ("channels", "side", "stride", "offset", "size")},
            )
            for entry in value
        )
        if any(layer.channels < 1 or layer.side < 1 for layer in layers):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise Unavailable(
            f"model {model}: '{LAYERS_PARAMETER}' must be a non-empty JSON list of "
            '{"name", "channels", "side", "stride", "offset", "size"}; re-export it'
        ) from None
    return layers


def projection_pngs(projections: np.ndarray) -> list[bytes]:
    """float32 (N, 3, H, W) -> one PNG each, every projection scaled by its own largest magnitude."""
    peaks = np.abs(projections).reshape(len(projections), -1).max(axis=1)
    scaled = projections / np.where(peaks > 0, peaks, 1.0).reshape(-1, 1, 1, 1)
    return [encode_png(image) for image in from_range(scaled, -1.0, 1.0)]


def repeat_rows(tensor: np.ndarray | DeferredRows, times: int) -> np.ndarray:
    """Each row `times` times in a row (image 0 k times, then image 1 ...). Deferred rows are decoded
    here, once each: a deferred image can be decoded only once, and they are small (few pixels)."""
    if isinstance(tensor, DeferredRows):
        rows = np.empty(tensor.shape, tensor.dtype)
        tensor.write_into(rows)
        tensor = rows
    return np.repeat(tensor, times, axis=0)


def class_count(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> int:
    """The classes a DeconvNet model can explain: its `logits` width; 0 when its graph has no `class` input
    (exported before the class mode). Unavailable when it has the input but no `logits` to go with it."""
    if CLASS not in {tensor.name for tensor in inputs}:
        return 0
    logits = [tensor for tensor in outputs if tensor.name == LOGITS]
    if not logits or len(logits[0].shape) != 1 or logits[0].shape[0] < 1:
        raise Unavailable(f"model {name} has a '{CLASS}' input but no '{LOGITS}' output [classes]; re-export it")
    return logits[0].shape[0]


@dataclass(frozen=True)
class Explainer:
    """A DeconvNet model with its preprocessing, layers and, for the class mode, its class count and labels."""

    model: TensorModel
    preprocessing: Preprocessing
    layers: tuple[ExplainedLayer, ...]
    limits: ImageLimits
    name: str
    classes: int = 0  # 0: the graph predates the class mode (no `class` input)
    labels: tuple[str, ...] = ()

    def layer_index(self, layer: str) -> int:
        """0-based index of `layer` (a name, a 1-based number, or empty for the last); InvalidArgument else."""
        names = [known.name for known in self.layers]
        if not layer:
            return len(names) - 1
        if layer in names:
            return names.index(layer)
        if layer.isdigit() and 1 <= int(layer) <= len(names):
            return int(layer) - 1
        raise InvalidArgument(
            f"layer {layer!r} is not a layer of this model; use a name ({', '.join(names)}) or 1 to {len(names)}"
        )

    def channel_count(self, layer: ExplainedLayer, top_k: int, images: int) -> int:
        """The channels to project per image (0 = DEFAULT_TOP_K, capped at the layer's); errors name the limit."""
        if top_k > layer.channels:
            raise InvalidArgument(f"top_k {top_k} is more than layer {layer.name}'s {layer.channels} channels")
        count = top_k or min(DEFAULT_TOP_K, layer.channels)
        if count * images > MAX_PROJECTIONS:
            raise ResourceExhausted(
                f"{images} images x {count} channels = {count * images} projections; the limit is "
                f"{MAX_PROJECTIONS} per request: send fewer images or a smaller top_k"
            )
        return count

    def class_index(self, wanted: ClassChoice) -> int:
        """The 0-based index of a class to explain; FailedPrecondition for a graph without the class mode,
        InvalidArgument naming an unknown label or an index out of range."""
        if self.classes == 0:
            raise FailedPrecondition(
                f"model {self.name} has no class mode (its graph has no '{CLASS}' input: exported before the class "
                "mode, or a full config without --set explain_by_class=true): it explains the strongest channels "
                "only; re-export it with the class mode to explain a class"
            )
        if isinstance(wanted, int):
            if not 0 <= wanted < self.classes:
                raise InvalidArgument(
                    f"class index {wanted} is out of range: model {self.name} has {self.classes} classes (0 to "
                    f"{self.classes - 1})"
                )
            return wanted
        if wanted in self.labels:
            return self.labels.index(wanted)
        listed = ", ".join(self.labels[:LISTED_LABELS]) + (", ..." if len(self.labels) > LISTED_LABELS else "")
        raise InvalidArgument(
            f"class {wanted!r} is not a label of model {self.name}"
            + (f"; its labels: {listed}" if self.labels else " (it has no labels.txt): give a class index")
        )

    async def explain(
        self,
        images: Sequence[ImageInput],
        layer: str,
        top_k: int,
        deadline: float | None,
        explained: ClassChoice | None = None,
    ) -> list[Explanation]:
        """`explained`: rank the channels by their contribution to that class's logit; None: by their peak."""
        index = self.layer_index(layer)
        chosen = self.layers[index]
        count = self.channel_count(chosen, top_k, len(images))
        target = BY_PEAK if explained is None else self.class_index(explained)
        batch = await prepare_images(images, self.preprocessing, self.limits)
        rows = count * len(images)
        inputs = {
            IMAGES: repeat_rows(batch.tensor, count),
            LAYER: np.full((rows, 1), index + 1, dtype=np.int64),
            RANK: np.tile(np.arange(count, dtype=np.int64), len(images)).reshape(rows, 1),
        }
        if self.classes:
            inputs[CLASS] = np.full((rows, 1), target, dtype=np.int64)
        outputs = await self.model.infer(inputs, deadline)
        projections = outputs[PROJECTION]
        height, width = self.preprocessing.size
        pngs = await run_image_work(lambda: projection_pngs(projections), height * width * rows)
        contributions = [0.0] * rows if explained is None else outputs[CONTRIBUTION][:, 0].tolist()
        found = [
            ChannelProjection(
                channel=channel,
                activation=activation,
                contribution=contribution,
                png=png,
                receptive_field=receptive_field(chosen, y, x, (height, width)),
            )
            for channel, activation, contribution, png, (y, x) in zip(
                outputs[CHANNEL][:, 0].tolist(),
                outputs[ACTIVATION][:, 0].tolist(),
                contributions,
                pngs,
                outputs[POSITION].tolist(),
                strict=True,
            )
        ]
        return [
            Explanation(
                chosen.name,
                tuple(found[i * count : (i + 1) * count]),
                None if explained is None else self._explained(target, outputs[LOGITS][i * count]),
            )
            for i in range(len(images))
        ]

    def _explained(self, index: int, logits: np.ndarray) -> Prediction:
        return Prediction(label=label_of(self.labels, index), index=index, score=float(softmax(logits[None])[0, index]))


def receptive_field(
    layer: ExplainedLayer, y: int, x: int, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 (x2, y2 exclusive) of the input pixels map position (y, x) sees, clipped."""
    height, width = size
    left, top = x * layer.stride + layer.offset, y * layer.stride + layer.offset
    return (
        float(max(left, 0)),
        float(max(top, 0)),
        float(min(left + layer.size, width)),
        float(min(top + layer.size, height)),
    )
