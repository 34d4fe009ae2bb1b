"""Warp: images -> the spatial transformer's warped image (PNG), its theta, its transform and its label.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] -> `warped` FP32
[B, 3, H, W] in the normalised input space, `theta` FP32 [B, ...] (affine [2, 3], projective [3, 3],
tps [K, 2]; config parameter `transform` names which, affine when absent), and optionally `logits`
FP32 [B, C] (a localisation net and sampler exported without a classifier head have none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import DEFAULT_TRANSFORM, IMAGES, LOGITS, THETA, WARPED
from serving.images import ImageInput, ImageLimits, Preprocessing, denormalise, encode_png
from serving.tasks.classify import label_of, softmax_top_k
from serving.tasks.common import TensorModel, prepare_images
from serving.tasks.offload import run_image_work


@dataclass(frozen=True)
class WarpResult:
    png: bytes  # the warped image at the model's input resolution
    theta: tuple[float, ...]  # the transform's parameters, row-major (see vision.proto's Warp)
    transform: str  # affine, projective or tps
    label: str  # "" when the model has no classifier head
    score: float


def warp_results(
    outputs: Mapping[str, np.ndarray], preprocessing: Preprocessing, labels: Sequence[str], transform: str
) -> list[WarpResult]:
    """De-normalise and PNG-encode `warped`, flatten `theta`, take the best class of `logits` when present."""
    pixels = denormalise(outputs[WARPED], preprocessing)
    thetas = outputs[THETA].reshape(len(pixels), -1).tolist()
    best: list[tuple[str, float]] = [("", 0.0)] * len(pixels)
    if LOGITS in outputs:
        top = softmax_top_k(outputs[LOGITS], 1)
        best = [
            (label_of(labels, index), score)
            for index, score in zip(top.indices[:, 0].tolist(), top.probabilities[:, 0].tolist(), strict=True)
        ]
    return [
        WarpResult(png=encode_png(image), theta=tuple(theta), transform=transform, label=label, score=score)
        for image, theta, (label, score) in zip(pixels, thetas, best, strict=True)
    ]


@dataclass(frozen=True)
class Warper:
    """A spatial-transformer model with its preprocessing, labels and transform."""

    model: TensorModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    limits: ImageLimits
    transform: str = DEFAULT_TRANSFORM

    async def warp(self, images: Sequence[ImageInput], deadline: float | None) -> list[WarpResult]:
        batch = await prepare_images(images, self.preprocessing, self.limits)
        outputs = await self.model.infer({IMAGES: batch.tensor}, deadline)
        height, width = self.preprocessing.size
        return await run_image_work(
            lambda: warp_results(outputs, self.preprocessing, self.labels, self.transform), height * width * len(images)
        )
