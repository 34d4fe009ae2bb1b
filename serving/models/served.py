"""One served model version: its description, its request validation, its state, and `infer`.

A transport counts each request with `model.request(deadline)` (the one place requests are
counted) and runs the model's inference inside it:

    with model.request(deadline):
        outputs = await model.infer({"images": batch}, deadline)

The registry (serving.models.registry) creates and looks these up; the loader
(serving.models.loader) brings one to READY.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc
from serving.backends import Backend
from serving.batching import DynamicBatcher, Tensors
from serving.deferred import DeferredRows
from serving.errors import InvalidArgument, NotReady, ServingError, cancellation_reason
from serving.input_ranges import InputRange
from serving.placement import Placement
from serving.repository import FileReader, ModelSource, ModelSpec
from serving.stats import ModelStatistics, ModelStatsSnapshot

if TYPE_CHECKING:
    from serving.models.loader import Loaded


class ModelState(str, enum.Enum):
    """Triton's model states (RepositoryIndex spells them the same)."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class RequestCount:
    """The block of `ServedModel.request`: a class rather than a @contextmanager generator, because it
    runs for every request and a generator costs several times as much (figures in docs/history/,
    request accounting). An exception that is no ServingError (a bug) is not counted;
    serving.api.status answers it INTERNAL."""

    __slots__ = ("_statistics", "_deadline", "_started")

    def __init__(self, statistics: ModelStatistics, deadline: float | None) -> None:
        self._statistics = statistics
        self._deadline = deadline
        self._started = 0

    def __enter__(self) -> None:
        self._started = time.perf_counter_ns()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        duration = time.perf_counter_ns() - self._started
        if error is None:
            self._statistics.on_request(duration)
        elif isinstance(error, ServingError):
            self._statistics.on_request(duration, error.reason)
        elif isinstance(error, asyncio.CancelledError):
            self._statistics.on_request(duration, cancellation_reason(self._deadline))


class ServedModel:
    """One model version: its description, its state, `request` (counts one request) and `infer` through
    its batcher.

    Attributes a transport reads: name, version, directory (the model folder, for files such as
    a vocabulary), config (the parsed `inference.ModelConfig`), task ("" = plain tensor model),
    family, parameters (str -> str), labels, inputs/outputs (TensorSpec; shapes without the batch
    axis when max_batch_size > 0), max_batch_size, instance_count, placements, state, reason.
    """

    def __init__(self, source: ModelSource, spec: ModelSpec, version: int, files: FileReader) -> None:
        self.name = spec.name
        self.version = version
        self.directory = source.directory
        self.files = files  # read anything else of the model folder (a vocabulary) through this
        self.spec = spec
        self.placements: tuple[Placement, ...] = ()
        self.state = ModelState.LOADING
        self.reason = ""
        self.statistics = ModelStatistics(spec.name, version, spec.task)
        self._batcher: DynamicBatcher | None = None
        self._backends: list[Backend] = []
        self._ranges: tuple[InputRange, ...] = ()
        self._reshape_in = {t.name: tuple(t.reshape.shape) for t in spec.config.input if t.reshape.shape}

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> mc.ModelConfig:
        return self.spec.config

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def parameters(self) -> Mapping[str, str]:
        return self.spec.parameters

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.outputs

    @property
    def max_batch_size(self) -> int:
        return self.spec.policy.max_batch_size

    @property
    def instance_count(self) -> int:
        return len(self.placements)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def stats(self) -> ModelStatsSnapshot:
        """Success/failure/queue/compute counts and durations, per-batch-size executions."""
        return self.statistics.snapshot()

    # ------------------------------------------------------------------ inference
    def request(self, deadline: float | None = None) -> RequestCount:
        """Count one request on this model, however the block ends: the one place requests are counted.

        Every transport wraps a whole request in it (decoding to response), so a request counts once,
        on the model it named: a success, or a failure with its reason (serving.errors; a call
        cancelled at its `deadline` as deadline_exceeded, otherwise cancelled), with its duration.
        `infer` counts nothing itself: a task request counts once, whatever calls its task makes.
        """
        return RequestCount(self.statistics, deadline)

    async def infer(self, inputs: Tensors, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run inputs through the model's dynamic batcher (counted by the caller's `request` block).

        inputs: every declared input by name; with max_batch_size > 0 each array is (B, *dims)
          with the same B >= 1 (B > max_batch_size is split and batched in chunks), exactly the
          declared dtype (no silent casts). With max_batch_size 0 the arrays have exactly `dims`.
          An input may be DeferredRows (serving.deferred): its rows are written on the instance
          thread straight into the batch, and a writer's ServingError fails this request only.
        deadline: absolute `time.monotonic()` seconds, None = none; a request still queued at its
          deadline fails with DeadlineExceeded and is never computed.
        Returns every declared output by name, (B, *dims) arrays (read-only views of the batch).
        Raises InvalidArgument (also for values outside the config's `input_ranges`; RejectedInput
        when the backend failed on this request alone in its batch), NotReady, ResourceExhausted
        (queue full), DeadlineExceeded, Internal (the backend failed; details in the server log).
        """
        batcher = self._batcher
        if batcher is None or self.state is not ModelState.READY:
            raise NotReady(f"model '{self.name}' version {self.version} is not ready ({self.state.value})")
        items = self._check(inputs)
        if self._reshape_in:
            inputs = self._reshaped(inputs, items)
        return await batcher.submit(inputs, items, deadline)

    def _check(self, inputs: Tensors) -> int:
        """Validate names, dtypes and shapes; return the batch size (1 without a batch axis)."""
        specs = self.spec.inputs
        if len(inputs) != len(specs) or any(spec.name not in inputs for spec in specs):
            expected = ", ".join(spec.name for spec in specs)
            unknown = sorted(set(inputs) - {spec.name for spec in specs})
            missing = [spec.name for spec in specs if spec.name not in inputs]
            raise InvalidArgument(
                f"model '{self.name}' takes inputs [{expected}]"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        batches = self.spec.policy.batches
        items = 1
        for index, spec in enumerate(specs):
            array = inputs[spec.name]
            if array.dtype != spec.dtype:
                raise InvalidArgument(
                    f"input '{spec.name}' of model '{self.name}' must be {spec.datatype}, got {array.dtype}"
                )
            shape = array.shape[1:] if batches else array.shape
            if (batches and array.ndim == 0) or not spec.accepts(shape):
                want = ("[B, " if batches else "[") + ", ".join(str(d) for d in spec.shape) + "]"
                raise InvalidArgument(
                    f"input '{spec.name}' of model '{self.name}' must have shape {want}, got {list(array.shape)}"
                )
            if batches:
                if array.shape[0] < 1:
                    raise InvalidArgument(
                        f"input '{spec.name}' of model '{self.name}' has batch size 0 (shape {list(array.shape)}); "
                        "send at least one item"
                    )
                if index == 0:
                    items = array.shape[0]
                elif array.shape[0] != items:
                    raise InvalidArgument(f"inputs of model '{self.name}' disagree on the batch size")
        for allowed in self._ranges:  # rows the server decoded itself (DeferredRows) are in range
            value = inputs[allowed.name]
            if isinstance(value, np.ndarray):
                allowed.check(value, self.name)
        return items

    def _reshaped(self, inputs: Tensors, items: int) -> Tensors:
        batches = self.spec.policy.batches
        lead = (items,) if batches else ()
        reshaped: dict[str, np.ndarray | DeferredRows] = {}
        for name, value in inputs.items():
            shape = self._reshape_in.get(name)
            if shape is None:
                reshaped[name] = value
            elif isinstance(value, DeferredRows):
                reshaped[name] = value.reshaped(shape) if batches else value.materialise().reshape(shape)
            else:
                reshaped[name] = value.reshape(lead + shape)
        return reshaped

    # ------------------------------------------------------------------ lifecycle (manager only)
    def _attach(self, loaded: Loaded, batcher: DynamicBatcher) -> None:
        self.placements = tuple(loaded.placements)
        self._backends = loaded.backends
        self._ranges = loaded.ranges
        self._batcher = batcher

    def _fail(self, reason: str) -> None:
        self.state = ModelState.UNAVAILABLE
        self.reason = reason

    async def _close(self) -> None:
        self.state = ModelState.UNLOADING
        if self._batcher is not None:
            await self._batcher.close()
        for backend in self._backends:
            backend.close()
        self._backends = []
        self._batcher = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"
