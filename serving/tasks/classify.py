"""Classify: images -> top-k labels with softmax probabilities.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] -> `logits` FP32 [B, C].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import IMAGES, LOGITS
from contract.ranking import top_columns
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.common import TensorModel, prepare_images

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


@dataclass(frozen=True)
class Classifier:
    """A classify model with its preprocessing and labels."""

    model: TensorModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    limits: ImageLimits

    async def classify(
        self, images: Sequence[ImageInput], top_k: int, deadline: float | None
    ) -> list[Classification]:
        """`top_k` 0 means DEFAULT_TOP_K; results in the order of `images`."""
        batch = await prepare_images(images, self.preprocessing, self.limits)
        outputs = await self.model.infer({IMAGES: batch.tensor}, deadline)
        return classifications(outputs[LOGITS], self.labels, top_k or DEFAULT_TOP_K)
