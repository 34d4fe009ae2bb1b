"""One backend per rung of the batch ladder, behind the Backend protocol: a GPU instance that only
ever runs fixed batch shapes (why: serving.ladder).

A batch of `n` rows runs on the session of the smallest rung >= n, padded with zero rows; the
padding rows are dropped from every output, so callers see exactly the rows they sent. A rung bound
to pre-allocated buffers (serving.backends.io_binding.BoundRung) pads into its own buffers instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from serving.backends import Backend, BackendSettings
from serving.backends.io_binding import BoundRung
from serving.ladder import drop_padding, pad_rows, rung_for
from serving.placement import Device


class FixedShapeBackend:
    """A backend per batch size; each sees a single input shape for its whole life."""

    def __init__(self, rungs: Mapping[int, Backend]) -> None:
        if not rungs:
            raise ValueError("a fixed-shape backend needs at least one batch size")
        self.ladder = tuple(sorted(rungs))
        self._rungs = dict(rungs)
        first = self._rungs[self.ladder[0]]
        self.inputs = first.inputs
        self.outputs = first.outputs

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on the rung that holds the batch; outputs keep only the batch's own rows."""
        items = next(iter(inputs.values())).shape[0]
        rung = rung_for(items, self.ladder)
        backend = self._rungs[rung]
        if rung == items or isinstance(backend, BoundRung):
            return backend.infer(inputs)
        return drop_padding(backend.infer(pad_rows(inputs, rung)), items, rung)

    def batch_buffer(self, name: str, rows: int, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """Where the batcher writes `rows` deferred rows of input `name` (decoded images): the bound rung's
        own input buffer, so the batch needs no copy before its run; None for an unbound rung."""
        if rows > self.ladder[-1]:
            return None
        backend = self._rungs[rung_for(rows, self.ladder)]
        return backend.batch_rows(name, rows, item_shape, dtype) if isinstance(backend, BoundRung) else None

    def close(self) -> None:
        for backend in self._rungs.values():
            backend.close()


def runs_fixed_shapes(settings: BackendSettings, device: Device, runtime: str) -> bool:
    """Whether an instance gets the ladder: ONNX Runtime instances on a GPU (settings.fixed_shapes
    "gpu", the default), on every device ("all"), or none ("off"). A TensorRT engine has its own
    optimisation profile and keeps dynamic shapes."""
    if runtime != "onnxruntime" or settings.fixed_shapes == "off":
        return False
    return settings.fixed_shapes == "all" or device.is_gpu


def open_fixed_shapes(ladder: Sequence[int], open_one: Callable[[int], Backend]) -> FixedShapeBackend:
    """A FixedShapeBackend of one fresh backend per rung (`open_one(rows)`); closes what it opened when
    one fails."""
    opened: dict[int, Backend] = {}
    try:
        for rung in ladder:
            opened[rung] = open_one(rung)
    except BaseException:
        for backend in opened.values():
            backend.close()
        raise
    return FixedShapeBackend(opened)


def warm_batch_sizes(backend: Backend) -> tuple[int, ...]:
    """The batch sizes a warm-up runs so the first request pays no setup: every rung, else 1."""
    return backend.ladder if isinstance(backend, FixedShapeBackend) else (1,)


def batcher_ladder(backends: Sequence[Backend]) -> tuple[int, ...]:
    """The ladder the model's batcher fills: that of its fixed-shape instances (all share one), else none."""
    return next((b.ladder for b in backends if isinstance(b, FixedShapeBackend)), ())
