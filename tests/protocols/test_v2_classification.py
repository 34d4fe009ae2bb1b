"""Triton's classification extension: top-k "score:index:label" strings per batch item."""

from __future__ import annotations

import numpy as np
import pytest

from serving.api.v2_classification import top_k_strings
from serving.errors import InvalidArgument


def test_top_k_per_batch_item_best_first_with_labels() -> None:
    logits = np.array([[0.1, 2.5, -1.0], [3.0, 0.0, 1.25]], dtype=np.float32)
    out = top_k_strings("logits", logits, 2, ["cat", "dog", "owl"], batched=True)
    assert out.shape == (2, 2)
    assert out.tolist() == [[b"2.500000:1:dog", b"0.100000:0:cat"], [b"3.000000:0:cat", b"1.250000:2:owl"]]


def test_k_is_capped_and_missing_labels_are_left_out() -> None:
    out = top_k_strings("scores", np.array([5, 7], dtype=np.int64), 10, ["only-one"], batched=False)
    assert out.tolist() == [b"7.000000:1", b"5.000000:0:only-one"]


def test_a_non_numeric_output_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="numeric output"):
        top_k_strings("out", np.array([[b"a"]], dtype=object), 1, [], batched=True)
