"""Training and held-out evaluation of the small detector on synthetic multi-object scenes.

Training is torchvision's own: FasterRCNN in train mode returns the RPN and Fast R-CNN losses (the
paper's approximate joint training), driven by the project's SGD loop (momentum, weight decay, warm-up
then cosine decay; export.train.fit).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN

from contract.scenes import Scene, make_scenes
from export.families.detection.mean_ap import ImageDetections, ImageTruth, MeanAP, mean_average_precision
from export.train import SGDRecipe, fit, set_threads, shuffled_batches


@dataclass(frozen=True)
class SceneSet:
    """images: FP32 [N, 3, S, S] in [0, 1] (torchvision's detector input; it normalises itself);
    targets: per image {"boxes": FP32 [K, 4] x1y1x2y2 px, "labels": INT64 [K] class id + 1 (0 = background)};
    truths: the same ground truth for mAP (class ids without background)."""

    images: torch.Tensor
    targets: tuple[dict[str, torch.Tensor], ...]
    truths: tuple[ImageTruth, ...]


def scene_set(object_counts: tuple[int, ...], scenes_per_count: int, size: int, seed: int, split: str) -> SceneSet:
    """``scenes_per_count`` scenes for each object count, drawn from seeds seed, seed + 1, ... of ``split``."""
    scenes: list[Scene] = []
    for offset, objects in enumerate(object_counts):
        scenes += make_scenes(scenes_per_count, size, seed + offset, objects=objects, split=split)
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float().div_(255)
    return SceneSet(
        images=images.contiguous(),
        targets=tuple(
            {"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.box_labels) + 1} for s in scenes
        ),
        truths=tuple(ImageTruth(s.boxes, s.box_labels) for s in scenes),
    )


def train_detector(model: FasterRCNN, data: SceneSet, recipe: SGDRecipe, seed: int, description: str) -> FasterRCNN:
    """Train in place with torchvision's summed detection losses; returns the model in eval mode.

    Runs single-threaded: a small detector's step is hundreds of tiny ops (per-image anchor matching,
    sampling, NMS), where a second thread only adds synchronisation. Measured here on the shared 2-core
    machine: 0.10 CPU-s per step with one thread against 0.44 with two (and 4x less wall time).
    """
    generator = torch.Generator().manual_seed(seed)
    count = len(data.targets)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        torch.set_num_threads(1)  # after fit()'s set_threads(); restored below
        for index in shuffled_batches(count, recipe.batch_size, generator):
            yield (index,)

    def loss(detector: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        chosen = batch[0].tolist()
        losses = detector(list(data.images[chosen]), [data.targets[i] for i in chosen])
        return sum(losses.values(), torch.zeros(()))

    try:
        return fit(model, batches, count // recipe.batch_size, loss, recipe, description)
    finally:
        set_threads()


@torch.no_grad()
def evaluate_detector(model: FasterRCNN, data: SceneSet, batch_size: int = 32) -> MeanAP:
    """VOC mAP@0.5 of torchvision's eval forward on ``data`` (labels shifted back to class ids)."""
    model.eval()
    detections = []
    for start in range(0, len(data.targets), batch_size):
        for output in model(list(data.images[start : start + batch_size])):
            detections.append(
                ImageDetections(output["boxes"].numpy(), output["scores"].numpy(), output["labels"].numpy() - 1)
            )
    return mean_average_precision(detections, data.truths)
