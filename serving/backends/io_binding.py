"""IOBinding for one rung of a fixed-shape instance: buffers allocated once, bound once, reused by
every batch.

Why: without a binding a CUDA session allocates its input on the device and copies it there, then
allocates the outputs and copies them back, inside every `run()`; ONNX Runtime's I/O binding docs
recommend copying the input to the device before the run and pre-allocating the outputs there. On
an H100 ResNet-50 fp32 ran 5,314 img/s at batch 32 with its input already on the GPU against 2,932
without (../shared/gpu/README.md). A rung sees one batch size for its whole life (serving.ladder), so
its buffers have one shape too.

A batch costs one copy in (its rows into the host buffer; on a GPU that buffer then goes to the
device in one copy) and one copy out (`copy_outputs_to_cpu`, the only copy of the outputs). The
padding rows are zero, as `serving.ladder.pad_rows` makes them: rows a previous, larger batch left
behind are zeroed, so stale values (NaN/inf included) never reach a model whose rows interact.
Inputs with dynamic dims beyond the batch axis keep one buffer, replaced when the item shape
changes; an output whose declared shape is not (batch, fixed dims...) is allocated by ONNX Runtime
on the device per run. Warm-up runs every rung before the model is READY, so a graph whose declared
output shape is wrong fails its load, not a request.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from serving.backends import BackendSettings
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.ladder import drop_padding
from serving.placement import Device


def runs_io_binding(settings: BackendSettings, device: Device) -> bool:
    """Whether a fixed-shape instance binds its rungs: on a GPU (settings.io_binding "gpu", the
    default), on every device ("all"), or nowhere ("off")."""
    if settings.io_binding == "off":
        return False
    return settings.io_binding == "all" or device.is_gpu


class BoundRung:
    """One session of one batch size (`rows`) run through an IOBinding of pre-allocated buffers.

    `infer` takes a batch of up to `rows` rows and returns outputs of exactly those rows. It holds a
    lock for the whole write-run-copy: the batcher calls one backend from one thread (uncontended,
    so the lock costs a fraction of a microsecond), and anything else calling it too cannot mix two
    batches in one buffer.
    """

    def __init__(self, backend: OnnxRuntimeBackend, rows: int, device: Device) -> None:
        self.rows = rows
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self._backend = backend
        self._location = ("cpu", 0) if device.gpu is None else ("cuda", device.gpu.index)
        self._binding = backend.session.io_binding()
        #: The host buffers batches are written into, by input name (reused from batch to batch).
        self.staging: dict[str, np.ndarray] = {}
        self._device_inputs: dict[str, ort.OrtValue] = {}  # GPU: the staging buffers' device copies
        #: The pre-allocated outputs, by name (those of a fixed item shape).
        self.bound_outputs: dict[str, ort.OrtValue] = {}
        self._dirty_rows = 0  # rows of the staging buffers that may hold an earlier batch's values
        self._lock = threading.Lock()
        kind, index = self._location
        for spec in self.outputs:
            if not spec.shape or spec.shape[0] != -1 or -1 in spec.shape[1:]:
                self._binding.bind_output(spec.name, kind, index)
                continue
            shape = (rows, *spec.shape[1:])
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, spec.dtype, kind, index)
            self._binding.bind_ortvalue_output(spec.name, value)
            self.bound_outputs[spec.name] = value

    def _buffer(self, name: str, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The staging buffer of input `name` for rows of `item_shape` and `dtype`; (re)allocated and
        bound when they are new."""
        buffer = self.staging.get(name)
        if buffer is not None and buffer.shape[1:] == item_shape and buffer.dtype == dtype:
            return buffer
        buffer = np.zeros((self.rows, *item_shape), dtype=dtype)
        kind, index = self._location
        if kind == "cpu":  # the OrtValue is a view of the buffer: writing the buffer writes the input
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
        else:
            value = ort.OrtValue.ortvalue_from_shape_and_type(buffer.shape, buffer.dtype, kind, index)
            self._device_inputs[name] = value
        self._binding.bind_ortvalue_input(name, value)
        self.staging[name] = buffer
        return buffer

    def batch_rows(self, name: str, rows: int, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The first `rows` rows of input `name`'s staging buffer, for the batcher to write a batch into
        (decoded images) so that `infer` needs no copy. Only for the thread that calls `infer` next:
        the rows are written outside the lock."""
        with self._lock:
            self._dirty_rows = max(self._dirty_rows, rows)  # whatever `infer` gets, these rows are not zero
            return self._buffer(name, tuple(item_shape), np.dtype(dtype))[:rows]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write the batch into the buffers (padding rows zero), run, copy the outputs out once and
        keep the batch's own rows. Raises ValueError for a batch larger than the rung."""
        items = next(iter(inputs.values())).shape[0]
        if items > self.rows:
            raise ValueError(f"a batch of {items} does not fit the batch-{self.rows} session")
        with self._lock:
            stale = self._dirty_rows
            self._dirty_rows = max(stale, items)  # still true if a write below fails
            for name, array in inputs.items():
                buffer = self._buffer(name, array.shape[1:], array.dtype)
                if not _is_start_of(array, buffer):  # else the batcher wrote the rows in place
                    buffer[:items] = array
                buffer[items:stale] = 0
                device_value = self._device_inputs.get(name)
                if device_value is not None:
                    device_value.update_inplace(buffer)
            self._dirty_rows = items
            self._backend.session.run_with_iobinding(self._binding)
            values = self._binding.copy_outputs_to_cpu()
        named = {spec.name: array for spec, array in zip(self.outputs, values, strict=True)}
        return drop_padding(named, items, self.rows)

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._backend.close()


def _is_start_of(array: np.ndarray, buffer: np.ndarray) -> bool:
    """Whether `array` is exactly the first rows of `buffer` (the rows `BoundRung.batch_rows` handed out)."""
    return (
        array.__array_interface__["data"][0] == buffer.__array_interface__["data"][0]
        and array.strides == buffer.strides
        and array.dtype == buffer.dtype
    )


def bound_rung(backend: OnnxRuntimeBackend, rows: int, device: Device) -> BoundRung:
    """`backend` as a BoundRung of `rows` rows; closes it when binding fails."""
    try:
        return BoundRung(backend, rows, device)
    except BaseException:
        backend.close()
        raise
