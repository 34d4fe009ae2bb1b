"""Classify: images -> top-k labels with softmax probabilities, optionally averaged over test-time crops.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] -> `logits` FP32 [B, C].

Multi-crop (AlexNet's and GoogLeNet's test-time augmentation): the crops and their averaging are
contract.multicrop's, the definition the export's multi-crop gate measures. Here the crops are cut from the
request's deferred rows, and all crops of a request go to the model as one request, so they share a batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from contract.multicrop import (
    CropCountError,
    CropView,
    averaged_log_probabilities,
    crop_source_size,
    crop_views,
    stacked_crops,
)
from contract.names import IMAGES, LOGITS
from contract.ranking import top_columns
from serving.deferred import DeferredRows, RowWriter
from serving.errors import InvalidArgument
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.common import TensorModel, prepare_images
from serving.tasks.offload import run_image_work

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float  # softmax probability


@dataclass(frozen=True)
class Classification:
    predictions: tuple[Prediction, ...]  # best first


@dataclass(frozen=True)
class TopK:
    """The k best classes per row: `indices` int (N, k) and `probabilities` float32 (N, k), best first."""

    indices: np.ndarray
    probabilities: np.ndarray


def softmax_top_k(logits: np.ndarray, k: int) -> TopK:
    """Top-`k` softmax probabilities of `logits` float (N, C); k is capped at C."""
    indices = top_columns(logits, min(k, logits.shape[1]))
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    rows = np.arange(len(logits))[:, None]
    probabilities = exponentials[rows, indices] / exponentials.sum(axis=1, keepdims=True)
    return TopK(indices=indices, probabilities=probabilities.astype(np.float32, copy=False))


def label_of(labels: Sequence[str], index: int) -> str:
    """labels.txt line `index`, or the index itself when the model has no such line."""
    return labels[index] if 0 <= index < len(labels) else str(index)


def classifications(logits: np.ndarray, labels: Sequence[str], k: int) -> list[Classification]:
    """One Classification per row of `logits` float (N, C)."""
    best = softmax_top_k(logits, k)
    return [
        Classification(
            predictions=tuple(
                Prediction(label=label_of(labels, index), index=index, score=score)
                for index, score in zip(row_indices.tolist(), row_scores.tolist(), strict=True)
            )
        )
        for row_indices, row_scores in zip(best.indices, best.probabilities, strict=True)
    ]


def checked_crop_views(crops: int, size: tuple[int, int]) -> tuple[CropView, ...]:
    """contract.multicrop.crop_views; InvalidArgument naming `crops` when it is not 1, 5 or 10."""
    try:
        return crop_views(crops, size)
    except CropCountError as error:
        raise InvalidArgument(f"{error} (0 means 1)") from None


def cropped(batch: np.ndarray | DeferredRows, views: Sequence[CropView]) -> np.ndarray | DeferredRows:
    """Every image's crops, image by image: (N * len(views), 3, h, w) rows. Deferred rows stay deferred:
    each image is decoded once, when its first crop is written, and its crops are cut from that."""
    if isinstance(batch, np.ndarray):
        return stacked_crops(batch, views)
    item_shape = views[0](np.empty(batch.item_shape, batch.dtype)).shape

    def crops_of(writer: RowWriter) -> list[RowWriter]:
        @functools.cache
        def decoded() -> np.ndarray:
            image = np.empty(batch.item_shape, batch.dtype)
            writer(image)
            return image

        def write(view: CropView) -> RowWriter:
            return lambda row: np.copyto(row, view(decoded()))

        return [write(view) for view in views]

    return DeferredRows(item_shape, batch.dtype, tuple(w for writer in batch.writers for w in crops_of(writer)))


@dataclass(frozen=True)
class Classifier:
    """A classify model with its preprocessing and labels."""

    model: TensorModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    limits: ImageLimits

    async def classify(
        self, images: Sequence[ImageInput], top_k: int, deadline: float | None, crops: int = 1
    ) -> list[Classification]:
        """`top_k` 0 means DEFAULT_TOP_K; `crops` 0 means 1 (else 5 or 10, see the module docstring);
        results in the order of `images`."""
        crops = crops or 1
        views = checked_crop_views(crops, self.preprocessing.size)
        source = replace(self.preprocessing, size=crop_source_size(crops, self.preprocessing.size))
        batch = await prepare_images(images, source, self.limits)
        tensor = batch.tensor
        if crops > 1:  # copying a large request's crops is image work: off the event loop
            rows = len(images) * crops * self.preprocessing.size[0] * self.preprocessing.size[1]
            tensor = await run_image_work(lambda: cropped(batch.tensor, views), rows)
        outputs = await self.model.infer({IMAGES: tensor}, deadline)
        logits = outputs[LOGITS] if crops == 1 else averaged_log_probabilities(outputs[LOGITS], crops)
        return classifications(logits, self.labels, top_k or DEFAULT_TOP_K)
