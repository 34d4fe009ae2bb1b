"""A model's image preprocessing as data, and the one implementation of it (numpy + Pillow, no torch).

The export writes a `Preprocessing` into each image model's config.pbtxt (parameter ``preprocessing``,
JSON; docs/MODEL_REPOSITORY.md) and measures, before it writes the model, that this implementation
followed by the ONNX graph answers as torchvision's own transforms followed by the PyTorch model do.
The server runs the same code on every request, so what was measured is what is served.

Modes (how an image of any size becomes the model's fixed `size` = (H, W) input):

- ``square``: resized to `size`, aspect not kept (the small configs: they train on square scenes).
- ``shorter_side``: shorter side resized to `resize` (the longer one in proportion, truncated, as
  torchvision's ``Resize(int)``), then the centre `size` cropped (``CenterCrop``): torchvision's
  ``ImageClassification`` preset, which ImageNet checkpoints were trained and evaluated with.
- ``letterbox``: scaled by ``min(resize / shorter, max_size / longer)`` (torchvision's
  ``GeneralizedRCNNTransform``), placed at the top-left of a canvas the height and width of the
  largest image of the batch rounded up to `size_divisible`, the rest zero after normalisation: exactly
  how torchvision batches a detector's images, so the model input's height and width vary (`size` is
  the largest canvas there can be); `placement` says where each image went, to map boxes back.

Resampling: with `antialias` Pillow's filters (what torchvision applies to PIL images); without it a
plain bilinear interpolation on float pixels, half-pixel centres, clamped at the edges (what
``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)`` computes; the detector's
own resize).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

SQUARE, SHORTER_SIDE, LETTERBOX = "square", "shorter_side", "letterbox"
MODES = (SQUARE, SHORTER_SIDE, LETTERBOX)
INTERPOLATIONS: Mapping[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
CHANNEL_ORDERS = ("RGB", "BGR")
#: Value ranges pixels are scaled to before mean/std: 1.0 = [0, 1] (torchvision), 255.0 = [0, 255].
VALUE_RANGES = (1.0, 255.0)


class PreprocessingError(ValueError):
    """A preprocessing description that cannot be carried out; the message names the field."""


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images (see the module docstring for the modes).

    size: (H, W) of the model input: the square size, the centre crop, or the largest letterbox canvas.
    resize: shorter side after resizing (shorter_side, letterbox); 0 for square.
    max_size: letterbox only: the longer side's limit (torchvision's detector ``max_size``).
    interpolation / antialias: see the module docstring; antialias False needs bilinear.
    mean / std: per channel in R, G, B order and in the units of value_range: the model sees
        ``(pixel * value_range / 255 - mean) / std``.
    channel_order: "RGB" or "BGR" (the order of the model's input channels).
    value_range: 1.0 (pixels scaled to [0, 1], torchvision) or 255.0 (left in [0, 255]).
    size_divisible: letterbox only: the canvas's height and width are multiples of it (the backbone's
        stride; torchvision's detectors: 32).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = SQUARE
    resize: int = 0
    max_size: int = 0
    interpolation: str = "bilinear"
    antialias: bool = True
    channel_order: str = "RGB"
    value_range: float = 1.0
    size_divisible: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {MODES}")
        if len(self.size) != 2 or min(self.size) <= 0:
            problems.append(f"size {list(self.size)} must be two positive integers [H, W]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std positive")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {tuple(INTERPOLATIONS)}")
        if not self.antialias and self.interpolation != "bilinear":
            problems.append("antialias false is implemented for bilinear interpolation only")
        if self.channel_order not in CHANNEL_ORDERS:
            problems.append(f"channel_order {self.channel_order!r} is not one of {CHANNEL_ORDERS}")
        if self.value_range not in VALUE_RANGES:
            problems.append(f"value_range {self.value_range} is not one of {VALUE_RANGES}")
        if self.mode == SHORTER_SIDE and self.resize < max(self.size):
            problems.append(f"shorter_side: resize {self.resize} must be at least the crop {list(self.size)}")
        if self.mode == LETTERBOX and not (0 < self.resize <= self.max_size <= min(self.size)):
            problems.append(
                f"letterbox: need 0 < resize ({self.resize}) <= max_size ({self.max_size}) <= canvas {list(self.size)}"
            )
        if self.size_divisible < 1 or any(side % self.size_divisible for side in self.size):
            problems.append(f"size {list(self.size)} must be a multiple of size_divisible {self.size_divisible}")
        if problems:
            raise PreprocessingError("preprocessing: " + "; ".join(problems))

    @functools.cached_property
    def scale(self) -> np.ndarray:
        """float32 (3, 1, 1), in the model's channel order: multiplies uint8 pixels (value_range / (255 * std))."""
        return self._ordered(self.value_range / (255.0 * np.asarray(self.std, dtype=np.float64)))

    @functools.cached_property
    def offset(self) -> np.ndarray:
        """float32 (3, 1, 1), in the model's channel order: -mean / std, added after `scale`."""
        return self._ordered(-np.asarray(self.mean, dtype=np.float64) / np.asarray(self.std, dtype=np.float64))

    @property
    def typical_size(self) -> tuple[int, int]:
        """An input size real images produce: `size`, or for ``letterbox`` a `resize` square (rounded up
        to `size_divisible`); what a server warms a model with whose input height and width vary."""
        if self.mode != LETTERBOX:
            return self.size
        side = -(-self.resize // self.size_divisible) * self.size_divisible
        return side, side

    def _ordered(self, values: np.ndarray) -> np.ndarray:
        ordered = values[::-1] if self.channel_order == "BGR" else values
        return np.ascontiguousarray(ordered, dtype=np.float32)[:, None, None]

    def to_json(self) -> str:
        """The config.pbtxt ``preprocessing`` parameter."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["size"], values["mean"], values["std"] = list(self.size), list(self.mean), list(self.std)
        return json.dumps(values)

    @staticmethod
    def from_json(text: str) -> Preprocessing:
        """Parse the parameter; the fields of older exports ({"size", "mean", "std"}) mean ``square``.

        Raises PreprocessingError naming what is wrong.
        """
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise PreprocessingError("preprocessing is not valid JSON") from None
        if not isinstance(value, dict):
            raise PreprocessingError("preprocessing must be a JSON object")
        return from_mapping(value)

    def with_overrides(self, overrides: Mapping[str, str]) -> Preprocessing:
        """A copy with fields set from ``KEY=VALUE`` text (the export's ``--preprocess``), checked."""
        return overridden({f.name: getattr(self, f.name) for f in fields(self)}, overrides)


def overridden(values: Mapping[str, object], overrides: Mapping[str, str]) -> Preprocessing:
    """`values` (JSON-like, see from_mapping) with fields set from ``KEY=VALUE`` text, checked once."""
    known = {f.name for f in fields(Preprocessing)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PreprocessingError(f"unknown preprocessing field(s) {unknown}; known: {sorted(known)}")
    return from_mapping({**values, **{key: _parse_field(key, text) for key, text in overrides.items()}})


def from_mapping(value: Mapping[str, object]) -> Preprocessing:
    """A Preprocessing from JSON-like values (lists for size/mean/std); PreprocessingError when malformed."""
    try:
        height, width = (int(n) for n in value["size"])  # type: ignore[attr-defined]
        mean = tuple(float(x) for x in value["mean"])  # type: ignore[attr-defined]
        std = tuple(float(x) for x in value["std"])  # type: ignore[attr-defined]
        extra = {
            "mode": str(value.get("mode", SQUARE)),
            "resize": int(value.get("resize", 0)),  # type: ignore[call-overload]
            "max_size": int(value.get("max_size", 0)),  # type: ignore[call-overload]
            "interpolation": str(value.get("interpolation", "bilinear")),
            "antialias": bool(value.get("antialias", True)),
            "channel_order": str(value.get("channel_order", "RGB")),
            "value_range": float(value.get("value_range", 1.0)),  # type: ignore[arg-type]
            "size_divisible": int(value.get("size_divisible", 1)),  # type: ignore[call-overload]
        }
    except (KeyError, TypeError, ValueError):
        raise PreprocessingError(
            'preprocessing must hold "size": [H, W], "mean": [3 floats], "std": [3 positive floats] '
            "and optionally mode, resize, max_size, interpolation, antialias, channel_order, value_range"
        ) from None
    if len(mean) != 3 or len(std) != 3:
        raise PreprocessingError("preprocessing: mean and std need 3 values each")
    return Preprocessing(size=(height, width), mean=mean, std=std, **extra)  # type: ignore[arg-type]


def _parse_field(key: str, text: str) -> object:
    """``--preprocess`` text -> the field's value: lists as ``a,b,c``, booleans as true/false."""
    try:
        if key in ("size", "mean", "std"):
            parts = [part for part in text.replace("x", ",").split(",") if part]
            if key == "size":
                return [int(p) for p in parts] * (2 if len(parts) == 1 else 1)  # 224 means 224 x 224
            return [float(p) for p in parts]
        if key == "antialias":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if key in ("resize", "max_size", "size_divisible"):
            return int(text)
        if key == "value_range":
            return float(text)
    except ValueError:
        raise PreprocessingError(f"preprocessing field {key}: cannot read {text!r}") from None
    return text


@dataclass(frozen=True)
class Placement:
    """Where an image of `original` (H, W) lands in the model input: resized to `resized` (H, W), then
    its top-left corner at `offset` (y, x) of the input (negative: a crop). Boxes in input pixels map back
    with `to_original`."""

    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """float (..., 4) x1, y1, x2, y2 in input pixels -> the original image's pixels, clipped to it.

        Per-axis ratios of the resized and original sizes, as torchvision's ``resize_boxes``.
        """
        ratio_y = self.original[0] / self.resized[0]
        ratio_x = self.original[1] / self.resized[1]
        shift = np.array([self.offset[1], self.offset[0]] * 2, dtype=np.float32)
        scale = np.array([ratio_x, ratio_y] * 2, dtype=np.float32)
        mapped = (boxes - shift) * scale
        limit = np.array([self.original[1], self.original[0]] * 2, dtype=np.float32)
        return np.clip(mapped, 0, limit)


def placement(original: tuple[int, int], preprocessing: Preprocessing) -> Placement:
    """Where an image of `original` (H, W) goes (see Placement), computed from the sizes alone."""
    height, width = original
    if preprocessing.mode == SQUARE:
        return Placement(original, preprocessing.size, (0, 0))
    if preprocessing.mode == SHORTER_SIDE:
        resized = shorter_side_size(original, preprocessing.resize)
        top, left = center_crop_offset(resized, preprocessing.size)
        return Placement(original, resized, (-top, -left))
    scale = min(preprocessing.resize / min(height, width), preprocessing.max_size / max(height, width))
    # torch.nn.functional.interpolate(scale_factor=..., recompute_scale_factor=True): floor(side * scale).
    return Placement(original, (max(1, math.floor(height * scale)), max(1, math.floor(width * scale))), (0, 0))


def input_size(placements: Sequence[Placement], preprocessing: Preprocessing) -> tuple[int, int]:
    """(H, W) of the model input for a batch of images placed so: `size`, except for ``letterbox``,
    where it is the largest resized height and width rounded up to `size_divisible`."""
    if preprocessing.mode != LETTERBOX:
        return preprocessing.size
    step = preprocessing.size_divisible
    height = max(place.resized[0] for place in placements)
    width = max(place.resized[1] for place in placements)
    return -(-height // step) * step, -(-width // step) * step


def shorter_side_size(original: tuple[int, int], shorter: int) -> tuple[int, int]:
    """torchvision's ``Resize(shorter)`` output (H, W): the longer side ``int(shorter * long / short)``."""
    height, width = original
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def center_crop_offset(resized: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """torchvision's ``CenterCrop`` top-left corner (y, x): ``int(round((side - crop) / 2))``."""
    return int(round((resized[0] - crop[0]) / 2.0)), int(round((resized[1] - crop[1]) / 2.0))


def preprocess_into(slot: np.ndarray, pixels: np.ndarray, preprocessing: Preprocessing) -> Placement:
    """Write the model input of one uint8 RGB image (H, W, 3) into float32 `slot` (3, *`input_size`).

    For ``square`` `pixels` may already be at `size` (the server resizes while decoding); any other
    size is resized here.
    """
    where = placement(pixels.shape[:2], preprocessing)
    if preprocessing.mode == LETTERBOX:
        slot.fill(0.0)
        height, width = where.resized
        _normalise_into(slot[:, :height, :width], resized_pixels(pixels, where.resized, preprocessing), preprocessing)
        return where
    resized = resized_pixels(pixels, where.resized, preprocessing)
    top, left = -where.offset[0], -where.offset[1]
    height, width = preprocessing.size
    _normalise_into(slot, resized[top : top + height, left : left + width], preprocessing)
    return where


def resized_pixels(pixels: np.ndarray, size: tuple[int, int], preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (H, W, 3) resized to `size` (H, W): uint8 through Pillow (antialias), else float32 bilinear."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    if not preprocessing.antialias:
        return bilinear(pixels, size)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(picture.resize((size[1], size[0]), INTERPOLATIONS[preprocessing.interpolation]))


def bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (h, w, 3): bilinear resampling without antialiasing, half-pixel centres, source
    coordinates below 0 clamped to 0 (torch's ``align_corners=False``). Rows first, so the only
    full-width float copy has the output's height."""
    rows = _taps(pixels.shape[0], size[0])
    columns = _taps(pixels.shape[1], size[1])
    source = pixels.astype(np.float32, copy=False) if pixels.dtype != np.float32 else pixels
    top = source[rows[0]] * rows[2][:, None, None] + source[rows[1]] * rows[3][:, None, None]
    return top[:, columns[0]] * columns[2][None, :, None] + top[:, columns[1]] * columns[3][None, :, None]


def _taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and their weights."""
    scale = source / target
    position = np.maximum((np.arange(target, dtype=np.float32) + 0.5) * np.float32(scale) - 0.5, 0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    weight_high = (position - low).astype(np.float32)
    return low, high, 1 - weight_high, weight_high


def _normalise_into(slot: np.ndarray, pixels: np.ndarray, preprocessing: Preprocessing) -> None:
    """``(pixels / 255 - mean) / std`` of (h, w, 3) pixels into (3, h, w) `slot`, channels in model order."""
    channels = pixels.transpose(2, 0, 1)
    if preprocessing.channel_order == "BGR":
        channels = channels[::-1]
    np.multiply(channels, preprocessing.scale, out=slot, casting="unsafe")
    slot += preprocessing.offset


def preprocess(images: Sequence[np.ndarray], preprocessing: Preprocessing) -> tuple[np.ndarray, list[Placement]]:
    """The model input of uint8 RGB images (H, W, 3), float32 (N, 3, *`input_size`), and their placements."""
    where = [placement(image.shape[:2], preprocessing) for image in images]
    batch = np.empty((len(images), 3, *input_size(where, preprocessing)), dtype=np.float32)
    for slot, image in zip(batch, images, strict=True):
        preprocess_into(slot, image, preprocessing)
    return batch, where
