"""Mean average precision at an IoU threshold, PASCAL VOC style (all-point interpolation), in numpy.

Per class: detections of all images sorted by score; each is a true positive when it overlaps a
not-yet-matched ground-truth box of its class in its image with IoU >= the threshold (the best-overlapping
one), else a false positive. AP is the area under the precision-recall curve after making precision
monotonically decreasing (VOC 2010+ "all-point" interpolation). mAP averages AP over the classes that
have ground truth; a class with detections but no ground truth is ignored, as in VOC.
Boxes are x1, y1, x2, y2 in continuous pixel coordinates (no +1 on widths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageDetections:
    """Predictions for one image: boxes (N, 4) float, scores (N,) float, labels (N,) int."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageTruth:
    """Ground truth for one image: boxes (M, 4) float, labels (M,) int."""

    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class MeanAP:
    """mean_ap over the classes with ground truth; per_class: class id -> AP (those classes only)."""

    mean_ap: float
    per_class: dict[int, float]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) between boxes a (N, 4) and b (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the all-point interpolated PR curve; recall ascending, same length as precision."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, non-increasing in recall
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _class_ap(
    cls: int, detections: Sequence[ImageDetections], truths: Sequence[ImageTruth], iou_threshold: float
) -> float:
    gt_boxes = [t.boxes[t.labels == cls] for t in truths]
    total = sum(len(b) for b in gt_boxes)
    image_ids, scores, boxes = [], [], []
    for index, det in enumerate(detections):
        mine = det.labels == cls
        image_ids.extend([index] * int(mine.sum()))
        scores.extend(det.scores[mine].tolist())
        boxes.extend(det.boxes[mine].reshape(-1, 4).tolist())
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    matched = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    hits = np.zeros(len(order), dtype=bool)
    for rank, det_index in enumerate(order):
        image = image_ids[det_index]
        if len(gt_boxes[image]) == 0:
            continue
        overlaps = box_iou(np.asarray(boxes[det_index]), gt_boxes[image])[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold and not matched[image][best]:
            matched[image][best] = True
            hits[rank] = True
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(~hits)
    recall = true_positives / total
    precision = true_positives / np.maximum(true_positives + false_positives, np.finfo(np.float64).eps)
    return average_precision(recall, precision)


def mean_average_precision(
    detections: Sequence[ImageDetections], truths: Sequence[ImageTruth], iou_threshold: float = 0.5
) -> MeanAP:
    """VOC mAP@iou_threshold over images (detections[i] and truths[i] describe the same image)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection sets for {len(truths)} images")
    classes = sorted({int(c) for t in truths for c in np.asarray(t.labels).tolist()})
    per_class = {cls: _class_ap(cls, detections, truths, iou_threshold) for cls in classes}
    value = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return MeanAP(mean_ap=value, per_class=per_class)
