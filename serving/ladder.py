"""Fixed batch shapes: the ladder of batch sizes a GPU instance runs, and which requests fill a rung.

Why: a CUDA session re-plans its convolutions whenever the input shape differs from its previous
run (over a hundred times a run's cost on an H100: docs/history/2026-11-27-gpu-shape-changes.md),
and the dynamic batcher makes a different size almost every time. So a GPU instance keeps one
warmed session per rung of a small ladder and pads each batch up to its rung
(serving.backends.fixed_shapes); the batcher, knowing the ladder, cuts a batch back to a rung it
fills exactly rather than pad far (`requests_to_take`). Pure functions: unit-tested anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def batch_ladder(max_batch_size: int, preferred: Sequence[int] = ()) -> tuple[int, ...]:
    """The rungs: powers of two below `max_batch_size`, the preferred sizes, and `max_batch_size`.

    max_batch_size 32 -> (1, 2, 4, 8, 16, 32); 24 with preferred (12,) -> (1, 2, 4, 8, 12, 16, 24).
    A model without a batch axis (0) has no ladder.
    """
    if max_batch_size <= 0:
        return ()
    sizes = {1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size}
    sizes |= {size for size in preferred if 0 < size <= max_batch_size}
    sizes.add(max_batch_size)
    return tuple(sorted(sizes))


def rung_for(items: int, ladder: Sequence[int]) -> int:
    """The smallest rung that holds `items` rows. Raises ValueError above the top rung."""
    for rung in ladder:
        if rung >= items:
            return rung
    raise ValueError(f"a batch of {items} is larger than the largest batch size {ladder[-1] if ladder else 0}")


def requests_to_take(sizes: Sequence[int], ladder: Sequence[int]) -> int:
    """How many of a batch's requests (their item counts, in queue order) to run now.

    All of them, unless a shorter prefix fills a rung exactly and the items beyond it are fewer
    than the padding the whole batch would need: 9 single-item requests run as 8 (the ninth waits
    for the next batch) instead of 9 padded to 16; 12 run as 12 padded to 16 (4 over 8, 4 of padding).
    """
    total = sum(sizes)
    padding = rung_for(total, ladder) - total
    take = len(sizes)
    filled = 0
    for count, size in enumerate(sizes[:-1], start=1):
        filled += size
        if filled in ladder and total - filled < padding:
            take = count
    return take


def drop_padding(outputs: Mapping[str, np.ndarray], items: int, rung: int) -> dict[str, np.ndarray]:
    """The first `items` rows of every output of a batch padded to `rung` rows. An output without the batch
    axis is left whole: the batcher names that model error."""
    return {name: array[:items] if array.ndim and array.shape[0] == rung else array for name, array in outputs.items()}


def pad_rows(inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Every array grown to `rows` rows on axis 0 with zero rows (the inputs warm-up runs on)."""
    padded = {}
    for name, array in inputs.items():
        out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
        out[: array.shape[0]] = array
        padded[name] = out
    return padded
