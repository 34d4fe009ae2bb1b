"""Detect: images -> boxes in each original image's pixel coordinates, labels, scores.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] -> `boxes` FP32 [B, K, 4]
(x1, y1, x2, y2 in the model's input grid W x H), `scores` FP32 [B, K], `labels` INT64 [B, K],
`num_detections` INT64 [B, 1]; rows past `num_detections` are padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import BOXES, IMAGES, LABELS, NUM_DETECTIONS, SCORES
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.classify import label_of
from serving.tasks.common import ImageSize, TensorModel, prepare_images

DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Box:
    """Pixel coordinates in the original image: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Detection:
    label: str
    index: int
    score: float
    box: Box


@dataclass(frozen=True)
class Detections:
    detections: tuple[Detection, ...]  # best first


@dataclass(frozen=True)
class DetectionOptions:
    """`score_threshold` keeps scores >= it; `max_detections` 0 keeps all that pass."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_detections: int = 0


def to_original_pixels(
    boxes: np.ndarray, input_size: tuple[int, int], original_sizes: Sequence[ImageSize]
) -> np.ndarray:
    """Scale boxes float (N, K, 4) from the model's input grid (H, W) to each image's own pixels.

    The image was resized without keeping its aspect, so x and y scale separately per image.
    """
    input_height, input_width = input_size
    scale = np.array(
        [[size.width / input_width, size.height / input_height] * 2 for size in original_sizes],
        dtype=np.float32,
    )
    return boxes * scale[:, None, :]


def select_detections(
    outputs: Mapping[str, np.ndarray],
    input_size: tuple[int, int],
    original_sizes: Sequence[ImageSize],
    labels: Sequence[str],
    options: DetectionOptions,
) -> list[Detections]:
    """Per image: drop padding rows and scores under the threshold, best first, at most max_detections."""
    boxes = to_original_pixels(outputs[BOXES], input_size, original_sizes)
    counts = outputs[NUM_DETECTIONS].reshape(-1)
    results = []
    for image, count in enumerate(counts.tolist()):
        scores = outputs[SCORES][image, :count]
        keep = np.flatnonzero(scores >= options.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        if options.max_detections:
            keep = keep[: options.max_detections]
        classes = outputs[LABELS][image, keep].tolist()
        results.append(
            Detections(
                detections=tuple(
                    Detection(label=label_of(labels, index), index=index, score=score, box=Box(*box))
                    for index, score, box in zip(
                        classes, scores[keep].tolist(), boxes[image, keep].tolist(), strict=True
                    )
                )
            )
        )
    return results


@dataclass(frozen=True)
class Detector:
    """A detect model with its preprocessing and labels."""

    model: TensorModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    limits: ImageLimits

    async def detect(
        self, images: Sequence[ImageInput], options: DetectionOptions, deadline: float | None
    ) -> list[Detections]:
        batch = await prepare_images(images, self.preprocessing, self.limits)
        outputs = await self.model.infer({IMAGES: batch.tensor}, deadline)
        return select_detections(outputs, self.preprocessing.size, batch.original_sizes, self.labels, options)
