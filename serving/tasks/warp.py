"""Warp: images -> the spatial transformer's warped image (PNG), its affine theta, and its label.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] -> `warped` FP32
[B, 3, H, W] in the normalised input space, `theta` FP32 [B, 2, 3], `logits` FP32 [B, C].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import IMAGES, LOGITS, THETA, WARPED
from serving.images import ImageInput, ImageLimits, Preprocessing, denormalise, encode_png
from serving.tasks.classify import label_of, softmax_top_k
from serving.tasks.common import TensorModel, prepare_images
from serving.tasks.offload import run_image_work


@dataclass(frozen=True)
class WarpResult:
    png: bytes  # the warped image at the model's input resolution
    theta: tuple[float, ...]  # 2x3 affine matrix, row-major (affine_grid convention)
    label: str
    score: float


def warp_results(
    outputs: Mapping[str, np.ndarray], preprocessing: Preprocessing, labels: Sequence[str]
) -> list[WarpResult]:
    """De-normalise and PNG-encode `warped`, flatten `theta`, take the best class of `logits`."""
    pixels = denormalise(outputs[WARPED], preprocessing)
    best = softmax_top_k(outputs[LOGITS], 1)
    thetas = outputs[THETA].reshape(len(pixels), 6).tolist()
    return [
        WarpResult(png=encode_png(image), theta=tuple(theta), label=label_of(labels, index), score=score)
        for image, theta, index, score in zip(
            pixels, thetas, best.indices[:, 0].tolist(), best.probabilities[:, 0].tolist(), strict=True
        )
    ]


@dataclass(frozen=True)
class Warper:
    """A spatial-transformer model with its preprocessing and labels."""

    model: TensorModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    limits: ImageLimits

    async def warp(self, images: Sequence[ImageInput], deadline: float | None) -> list[WarpResult]:
        batch = await prepare_images(images, self.preprocessing, self.limits)
        outputs = await self.model.infer({IMAGES: batch.tensor}, deadline)
        height, width = self.preprocessing.size
        return await run_image_work(
            lambda: warp_results(outputs, self.preprocessing, self.labels), height * width * len(images)
        )
