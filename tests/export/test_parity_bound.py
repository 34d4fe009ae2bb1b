"""The parity bound (export.onnx.compare): element-wise atol + rtol, and row_rtol relative to each row's
largest value, for outputs served scaled to it (Explain's projections)."""

from __future__ import annotations

import numpy as np

from export.families.base import Tolerance
from export.onnx import compare


def test_row_bound_scales_with_each_rows_largest_value() -> None:
    expected = np.array([[1000.0, 0.0], [1.0, 0.0]], np.float32)
    shifted = expected + np.array([[0.5, 0.5], [0.0, 0.0]], np.float32)  # 0.5 off where row 0 peaks at 1000
    assert not compare("x", expected, shifted, Tolerance(atol=1e-4, rtol=1e-3)).passed  # 0.5 > 1e-4 beside 0
    assert compare("x", expected, shifted, Tolerance(atol=1e-4, rtol=1e-3, row_rtol=1e-3)).passed  # 0.5 <= 1.0
    small_row_off = expected + np.array([[0.0, 0.0], [0.0, 0.5]], np.float32)  # row 1 peaks at 1: allows 1e-3
    assert not compare("x", expected, small_row_off, Tolerance(atol=1e-4, rtol=1e-3, row_rtol=1e-3)).passed


def test_a_non_finite_value_still_fails_under_the_row_bound() -> None:
    expected = np.array([[1.0, 2.0]], np.float32)
    actual = np.array([[1.0, np.nan]], np.float32)
    check = compare("x", expected, actual, Tolerance(atol=1e-4, row_rtol=1e-3))
    assert not check.passed
    assert "row_rtol=0.001" in check.detail
