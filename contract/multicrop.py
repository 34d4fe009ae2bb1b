"""Multi-crop classification (AlexNet's and GoogLeNet's test-time augmentation), defined once: which crops of
an image, cut from what size, how their answers combine, and how that is measured against a single crop.

The image is resized to the model's size divided by CROP_FRACTION (AlexNet: 256 for 224 crops), crops of the
model's size are cut at the four corners and the centre (and, for 10, the same five flipped left to right),
and the softmax of their logits is averaged. The server's Classify(crops=5|10) runs this on every request;
the export measures and gates each small classifier's multi-crop accuracy with it
(export/families/classifier.py), and benchmarks/multicrop.py measures the served answers with its figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from contract.ranking import softmax

#: Crops per image a request may ask for: the whole image, 4 corners + centre, and those flipped.
CROP_COUNTS = (1, 5, 10)
#: A crop's side as a fraction of the resized image's (AlexNet's 224 of 256).
CROP_FRACTION = 7 / 8
#: Held-out scenes are drawn this much larger than the model's input when crops are measured: a photo is
#: larger than a model's input, and a scene drawn at the input's own size would only be resized back up.
SCENE_SCALE = 1.25

CropView = Callable[[np.ndarray], np.ndarray]
"""(3, H', W') image at `crop_source_size` -> one (3, H, W) crop of it (a view, not a copy)."""


class CropCountError(ValueError):
    """A crop count other than those of CROP_COUNTS; the message names it."""


def crop_source_size(crops: int, size: tuple[int, int]) -> tuple[int, int]:
    """The size images are resized to before cropping: the model's size itself for 1 crop, else divided by
    CROP_FRACTION."""
    if crops == 1:
        return size
    return round(size[0] / CROP_FRACTION), round(size[1] / CROP_FRACTION)


def crop_views(crops: int, size: tuple[int, int]) -> tuple[CropView, ...]:
    """The `crops` views (1, 5 or 10) of an image at `crop_source_size` that give (3, *size) crops: corners
    top-left, top-right, bottom-left, bottom-right, the centre, then the same five flipped left to right.
    CropCountError naming `crops` for any other count."""
    if crops not in CROP_COUNTS:
        raise CropCountError(f"crops {crops} is not one of 1, 5 or 10")
    height, width = size
    full_height, full_width = crop_source_size(crops, size)
    corners = [(0, 0), (0, full_width - width), (full_height - height, 0), (full_height - height, full_width - width)]
    origins = [*corners, ((full_height - height) // 2, (full_width - width) // 2)][:crops]

    def view(top: int, left: int, flip: bool) -> CropView:
        step = -1 if flip else 1
        return lambda image: image[:, top : top + height, left : left + width][:, :, ::step]

    return tuple(view(top, left, flip) for flip in (False, True)[: 1 + (crops == 10)] for top, left in origins)


def stacked_crops(images: np.ndarray, views: Sequence[CropView]) -> np.ndarray:
    """Every image's crops, image by image: (N, 3, H', W') -> contiguous (N * len(views), 3, H, W)."""
    return np.ascontiguousarray(np.stack([view(image) for image in images for view in views]))


def averaged_log_probabilities(logits: np.ndarray, crops: int) -> np.ndarray:
    """float (N * crops, C) logits -> (N, C) log of each image's softmax averaged over its crops: logits whose
    softmax is that average, so the single-crop postprocessing applies unchanged."""
    averaged = softmax(logits).reshape(-1, crops, logits.shape[1]).mean(axis=1)
    with np.errstate(divide="ignore"):  # a class no crop gives any probability: -inf, softmax 0
        return np.log(averaged)


@dataclass(frozen=True)
class CropFigures:
    """One crop count's answers on labelled images: top-1 accuracy, its change against 1 crop, and the
    fraction of images whose top-1 answer is 1 crop's."""

    crops: int
    accuracy: float
    accuracy_change: float
    agreement_with_one_crop: float


def crop_figures(truth: ArrayLike, top1: Mapping[int, ArrayLike]) -> tuple[CropFigures, ...]:
    """Figures per crop count of `top1` (crop count -> each image's top-1 answer, 1 among the counts),
    against the true answers `truth` (labels or class indices, as the answers are)."""
    expected = np.asarray(truth)
    single = np.asarray(top1[1])
    single_accuracy = float(np.mean(single == expected))
    figures = []
    for crops, answers in top1.items():
        answered = np.asarray(answers)
        accuracy = float(np.mean(answered == expected))
        agreement = float(np.mean(answered == single))
        figures.append(CropFigures(crops, accuracy, accuracy - single_accuracy, agreement))
    return tuple(figures)
