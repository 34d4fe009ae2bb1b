"""Input rows that are produced where the batch is assembled, not where the request arrives.

A task hands the model `DeferredRows` instead of an array when making the rows costs real work
(decoding images): the instance thread that runs the batch calls every row's writer straight into
the batch's input buffer. So that work runs once per batch, off the event loop, with no
per-request thread hop and no copy to concatenate requests, while the loop keeps answering RPCs
(measured in docs/PERFORMANCE.md).

A writer may raise a ServingError (e.g. a corrupt image): only its own request fails; the other
requests of the batch still run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Writes one row (an array of the item shape and dtype, C-contiguous) in place.
RowWriter = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class DeferredRows:
    """`len(writers)` rows of one input of `item_shape` and `dtype`, written on demand.

    Quacks like an array where the core validates a request (`shape`, `ndim`, `dtype`, slicing
    along axis 0), so a model checks it exactly as it checks an array.
    """

    item_shape: tuple[int, ...]
    dtype: np.dtype
    writers: tuple[RowWriter, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.writers), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def __getitem__(self, rows: slice) -> DeferredRows:
        """Rows `rows` (a slice of axis 0), still deferred; used to split a request into chunks."""
        return DeferredRows(self.item_shape, self.dtype, self.writers[rows])

    def reshaped(self, item_shape: tuple[int, ...]) -> DeferredRows:
        """The same rows seen with another item shape of as many elements (config `reshape`)."""
        original = self.item_shape

        def through(writer: RowWriter) -> RowWriter:
            return lambda out: writer(out.reshape(original))

        return DeferredRows(item_shape, self.dtype, tuple(through(w) for w in self.writers))

    def write_into(self, out: np.ndarray) -> None:
        """Fill `out` (rows, *item_shape), row by row; a writer's error propagates."""
        for row, writer in zip(out, self.writers, strict=True):
            writer(row)

    def materialise(self) -> np.ndarray:
        """The rows as a new array (on the calling thread)."""
        out = np.empty(self.shape, dtype=self.dtype)
        self.write_into(out)
        return out
