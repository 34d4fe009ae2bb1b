"""Detect: images -> boxes in each original image's pixel coordinates, labels, scores.

Model contract (docs/MODEL_REPOSITORY.md): `images` FP32 [B, 3, H, W] (H and W vary with the batch
for a ``letterbox`` preprocessing, which adds `image_sizes` FP32 [B, 2]: the height and width each
image fills of that canvas) ->
`boxes` FP32 [B, K, 4] (x1, y1, x2, y2 in the model's input grid W x H), `scores` FP32 [B, K],
`labels` INT64 [B, K], `num_detections` INT64 [B, 1]; rows past `num_detections` are padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import BOXES, IMAGE_SIZES, IMAGES, LABELS, NUM_DETECTIONS, SCORES
from contract.preprocessing import LETTERBOX, Placement
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.classify import label_of
from serving.tasks.common import TensorModel, prepare_images

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


def to_original_pixels(boxes: np.ndarray, where: Sequence[Placement]) -> np.ndarray:
    """Boxes float (N, K, 4) from the model's input grid to each image's own pixels, clipped to it."""
    return np.stack([place.to_original(image_boxes) for place, image_boxes in zip(where, boxes, strict=True)])


def image_sizes(where: Sequence[Placement]) -> np.ndarray:
    """The `image_sizes` input of a letterbox detector: FP32 [B, 2] resized (height, width) per image."""
    return np.array([place.resized for place in where], dtype=np.float32)


def select_detections(
    outputs: Mapping[str, np.ndarray],
    where: Sequence[Placement],
    labels: Sequence[str],
    options: DetectionOptions,
) -> list[Detections]:
    """Per image: drop padding rows and scores under the threshold, best first, at most max_detections."""
    boxes = to_original_pixels(outputs[BOXES], where)
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
        inputs = {IMAGES: batch.tensor}
        if self.preprocessing.mode == LETTERBOX:
            inputs[IMAGE_SIZES] = image_sizes(batch.placements)
        outputs = await self.model.infer(inputs, deadline)
        return select_detections(outputs, batch.placements, self.labels, options)
