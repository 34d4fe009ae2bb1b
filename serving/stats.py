"""Per-model statistics: one accumulator that both /metrics and ModelStatistics read.

Everything is updated on the event-loop thread only (the batcher reports completed batches
there), so no locks are needed and a snapshot is always self-consistent. The Prometheus
collector in `serving.metrics` renders these numbers at scrape time, so the Open Inference
Protocol's ModelStatistics and /metrics agree by construction.

Semantics follow Triton: request counts/durations are per request; queue and compute
durations are per request too (each request of a batch is charged the batch's compute time);
`batch_stats` and `execution_count` are per batch execution.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the duration histograms.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Upper bounds of the batch-size histogram.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Duration:
    """`count` events that took `ns` nanoseconds in total."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStats:
    """Executions of one batch size: input gathering, the backend call, output splitting."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative-free bucket counts (one per bound, plus +Inf last), sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass(frozen=True)
class ModelStatsSnapshot:
    """A consistent copy of one model version's statistics (Triton's ModelStatistics fields)."""

    name: str
    version: int
    task: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    failures_by_reason: dict[str, int]
    pending: int
    batch_stats: tuple[BatchStats, ...]
    request_seconds: HistogramSnapshot
    queue_seconds: HistogramSnapshot
    compute_seconds: HistogramSnapshot
    batch_sizes: HistogramSnapshot


class _Histogram:
    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total, self.count)


@dataclass
class _Accumulated:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def frozen(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass
class _BatchAccumulated:
    compute_input: _Accumulated = field(default_factory=_Accumulated)
    compute_infer: _Accumulated = field(default_factory=_Accumulated)
    compute_output: _Accumulated = field(default_factory=_Accumulated)


class ModelStatistics:
    """The accumulator for one model version. Call only from the event-loop thread.

    The batcher reports `on_dequeued` per request and `on_batch` per execution; the model
    reports `on_request` once per request it answered (or failed).
    """

    def __init__(self, name: str, version: int, task: str) -> None:
        self.name = name
        self.version = version
        self.task = task
        self.pending = 0
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        self._success = _Accumulated()
        self._fail = _Accumulated()
        self._queue = _Accumulated()
        self._compute_input = _Accumulated()
        self._compute_infer = _Accumulated()
        self._compute_output = _Accumulated()
        self._failures_by_reason: dict[str, int] = {}
        self._batches: dict[int, _BatchAccumulated] = {}
        self._request_seconds = _Histogram(DURATION_BUCKETS)
        self._queue_seconds = _Histogram(DURATION_BUCKETS)
        self._compute_seconds = _Histogram(DURATION_BUCKETS)
        self._batch_sizes = _Histogram(BATCH_SIZE_BUCKETS)

    def on_enqueued(self) -> None:
        """A request entered the queue."""
        self.pending += 1

    def on_dequeued(self, queue_ns: int) -> None:
        """A request left the queue (dispatched to an instance, expired or cancelled)."""
        self.pending -= 1
        self._queue.add(queue_ns)
        self._queue_seconds.observe(queue_ns * 1e-9)

    def on_batch(self, requests: int, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One execution of `batch_size` items gathered from `requests` requests finished."""
        self._execution_count += 1
        self._inference_count += batch_size
        self._last_inference_ms = int(time.time() * 1000)
        self._compute_input.add(input_ns * requests, requests)
        self._compute_infer.add(infer_ns * requests, requests)
        self._compute_output.add(output_ns * requests, requests)
        per_size = self._batches.get(batch_size)
        if per_size is None:
            per_size = self._batches[batch_size] = _BatchAccumulated()
        per_size.compute_input.add(input_ns)
        per_size.compute_infer.add(infer_ns)
        per_size.compute_output.add(output_ns)
        self._compute_seconds.observe((input_ns + infer_ns + output_ns) * 1e-9)
        self._batch_sizes.observe(batch_size)

    def on_request(self, duration_ns: int, failure_reason: str | None = None) -> None:
        """A request finished: successfully when `failure_reason` is None."""
        if failure_reason is None:
            self._success.add(duration_ns)
        else:
            self._fail.add(duration_ns)
            self._failures_by_reason[failure_reason] = self._failures_by_reason.get(failure_reason, 0) + 1
        self._request_seconds.observe(duration_ns * 1e-9)

    def snapshot(self) -> ModelStatsSnapshot:
        """A consistent, immutable copy."""
        return ModelStatsSnapshot(
            name=self.name,
            version=self.version,
            task=self.task,
            last_inference_ms=self._last_inference_ms,
            inference_count=self._inference_count,
            execution_count=self._execution_count,
            success=self._success.frozen(),
            fail=self._fail.frozen(),
            queue=self._queue.frozen(),
            compute_input=self._compute_input.frozen(),
            compute_infer=self._compute_infer.frozen(),
            compute_output=self._compute_output.frozen(),
            failures_by_reason=dict(self._failures_by_reason),
            pending=self.pending,
            batch_stats=tuple(
                BatchStats(
                    size,
                    acc.compute_input.frozen(),
                    acc.compute_infer.frozen(),
                    acc.compute_output.frozen(),
                )
                for size, acc in sorted(self._batches.items())
            ),
            request_seconds=self._request_seconds.snapshot(),
            queue_seconds=self._queue_seconds.snapshot(),
            compute_seconds=self._compute_seconds.snapshot(),
            batch_sizes=self._batch_sizes.snapshot(),
        )
