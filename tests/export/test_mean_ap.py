"""VOC mAP@0.5 (all-point interpolation) on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from export.families.detection.mean_ap import (
    ImageDetections,
    ImageTruth,
    average_precision,
    box_iou,
    mean_average_precision,
)


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> ImageDetections:
    return ImageDetections(
        np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores), np.array(labels, dtype=np.int64)
    )


def _truth(boxes: list[list[float]], labels: list[int]) -> ImageTruth:
    return ImageTruth(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64))


def test_box_iou_of_half_overlapping_boxes() -> None:
    # 10x10 boxes shifted by 5 px: intersection 50, union 150.
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[20, 20, 30, 30]]))[0, 0] == 0.0


def test_perfect_detections_score_one() -> None:
    truths = [_truth([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    detections = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [0, 1])]
    result = mean_average_precision(detections, truths)
    assert result.mean_ap == pytest.approx(1.0)
    assert result.per_class == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_false_positive_ranked_first_halves_precision() -> None:
    # Ranked: FP (0.9), TP (0.8): recall 1 reached at precision 1/2 -> AP 0.5.
    truths = [_truth([[0, 0, 10, 10]], [0])]
    detections = [_det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(detections, truths).mean_ap == pytest.approx(0.5)


def test_false_positive_ranked_last_costs_nothing() -> None:
    truths = [_truth([[0, 0, 10, 10]], [0])]
    detections = [_det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 0])]
    assert mean_average_precision(detections, truths).mean_ap == pytest.approx(1.0)


def test_duplicate_detection_is_a_false_positive_and_misses_count() -> None:
    # Two GT in two images; ranked: TP(img0), duplicate on img0 (FP), and img1's GT never found.
    # PR points: (0.5, 1), (0.5, 0.5) -> AP = 0.5 * 1.
    truths = [_truth([[0, 0, 10, 10]], [0]), _truth([[0, 0, 10, 10]], [0])]
    detections = [_det([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.7], [0, 0]), _det([], [], [])]
    assert mean_average_precision(detections, truths).mean_ap == pytest.approx(0.5)


def test_all_point_interpolation_uses_precision_envelope() -> None:
    # Ranked hits: T, F, T over 2 GT -> recall (0.5, 0.5, 1), precision (1, 0.5, 2/3).
    # Envelope: 1 up to recall 0.5, then 2/3 up to 1 -> AP = 0.5 + 0.5 * 2/3.
    truths = [_truth([[0, 0, 10, 10], [30, 30, 40, 40]], [0, 0])]
    detections = [_det([[0, 0, 10, 10], [60, 60, 70, 70], [30, 30, 40, 40]], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert mean_average_precision(detections, truths).mean_ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)


def test_iou_below_threshold_and_wrong_class_do_not_match() -> None:
    truths = [_truth([[0, 0, 10, 10]], [0])]
    shifted = [_det([[6, 0, 16, 10]], [0.9], [0])]  # IoU 4/16 = 0.25
    wrong_class = [_det([[0, 0, 10, 10]], [0.9], [1])]
    assert mean_average_precision(shifted, truths).mean_ap == 0.0
    # Class 1 has no ground truth: ignored; class 0 is never detected.
    result = mean_average_precision(wrong_class, truths)
    assert result.per_class == {0: 0.0}


def test_classes_are_averaged() -> None:
    truths = [_truth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    detections = [_det([[0, 0, 10, 10]], [0.9], [0])]  # class 1 missed entirely
    assert mean_average_precision(detections, truths).mean_ap == pytest.approx(0.5)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="detection sets"):
        mean_average_precision([], [_truth([[0, 0, 1, 1]], [0])])
