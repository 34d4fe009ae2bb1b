"""contract.multicrop: the crops' geometry, the averaging of their softmax, and the figures against 1 crop."""

from __future__ import annotations

import numpy as np
import pytest

from contract.multicrop import (
    CropCountError,
    averaged_log_probabilities,
    crop_figures,
    crop_source_size,
    crop_views,
    stacked_crops,
)


def test_crops_are_the_corners_the_centre_and_their_mirror_images() -> None:
    size = (4, 6)
    height, width = crop_source_size(10, size)
    assert (height, width) == (5, 7)  # 4 / (7/8) = 4.57 and 6 / (7/8) = 6.86, rounded
    image = np.arange(3 * height * width, dtype=np.float32).reshape(3, height, width)
    crops = [view(image) for view in crop_views(10, size)]
    origins = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]  # centre: (5 - 4) // 2, (7 - 6) // 2
    assert [crop.shape for crop in crops] == [(3, *size)] * 10
    for index, (top, left) in enumerate(origins):
        np.testing.assert_array_equal(crops[index], image[:, top : top + 4, left : left + 6])
        np.testing.assert_array_equal(crops[5 + index], crops[index][:, :, ::-1])
    assert len(crop_views(5, size)) == 5 and crop_source_size(1, size) == size


def test_stacked_crops_go_image_by_image() -> None:
    images = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)
    views = crop_views(5, (4, 6))
    stacked = stacked_crops(images, views)
    assert stacked.shape == (10, 3, 4, 6) and stacked.flags.c_contiguous
    np.testing.assert_array_equal(stacked[7], views[2](images[1]))


@pytest.mark.parametrize("crops", [0, 2, 3, 4, 11])
def test_other_crop_counts_are_refused_by_name(crops: int) -> None:
    with pytest.raises(CropCountError, match=f"crops {crops} is not one of 1, 5 or 10"):
        crop_views(crops, (4, 4))


def test_averaged_log_probabilities_are_logits_of_the_mean_softmax() -> None:
    logits = np.random.default_rng(2).normal(size=(2 * 5, 4)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mean = probabilities.reshape(2, 5, 4).mean(axis=1)
    np.testing.assert_allclose(np.exp(averaged_log_probabilities(logits, 5)), mean, rtol=1e-5)


def test_crop_figures_compare_each_count_with_the_truth_and_with_one_crop() -> None:
    truth = ["a", "b", "c", "d"]
    one, five, ten = crop_figures(truth, {1: ["a", "b", "x", "x"], 5: ["a", "b", "c", "x"], 10: ["y", "b", "x", "x"]})
    assert (one.crops, one.accuracy, one.accuracy_change, one.agreement_with_one_crop) == (1, 0.5, 0.0, 1.0)
    assert (five.crops, five.accuracy, five.accuracy_change, five.agreement_with_one_crop) == (5, 0.75, 0.25, 0.75)
    assert (ten.crops, ten.accuracy, ten.accuracy_change, ten.agreement_with_one_crop) == (10, 0.25, -0.25, 0.75)
