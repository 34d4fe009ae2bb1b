"""Top-k column selection, shared by classification's top-k and caption beam search, and the row-wise softmax."""

from __future__ import annotations

import numpy as np

#: Above this many columns a partition before sorting pays for its extra call.
_PARTITION_ABOVE = 64


def top_columns(scores: np.ndarray, count: int) -> np.ndarray:
    """Column indices of the `count` (<= columns) largest values of each row, best first: int (N, count).

    Ties keep the lower index first. Fancy indexing rather than take_along_axis: this runs on
    every classify request, where per-call NumPy overhead dominates small arrays.
    """
    columns = scores.shape[1]
    if count >= columns or columns <= _PARTITION_ABOVE:
        return np.argsort(-scores, axis=1, kind="stable")[:, :count]
    candidates = np.sort(np.argpartition(scores, columns - count, axis=1)[:, columns - count :], axis=1)
    rows = np.arange(len(scores))[:, None]
    order = np.argsort(-scores[rows, candidates], axis=1, kind="stable")
    return candidates[rows, order]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float (N, C) logits (shifted by each row's maximum, so large logits do not overflow)."""
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)
