"""Prometheus metrics on an HTTP port (/metrics), rendered from the core's own statistics.

Names follow Triton where the meaning is the same (so Triton's dashboards work) and are
documented in docs/METRICS.md. Nothing is counted twice: the collector reads each model's
`ModelStatistics` at scrape time, the same numbers the Open Inference Protocol's
ModelStatistics returns, and the hot path pays no Prometheus client calls.

Triton's counters carry no `_total` suffix; neither do ours (the exposition stays Triton's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from serving.errors import FAILURE_REASONS
from serving.models import ModelManager
from serving.stats import HistogramSnapshot, ModelStatsSnapshot

log = logging.getLogger(__name__)

# Triton's names (labels model, version).
REQUEST_SUCCESS = "nv_inference_request_success"
REQUEST_FAILURE = "nv_inference_request_failure"  # + reason
INFERENCE_COUNT = "nv_inference_count"
EXEC_COUNT = "nv_inference_exec_count"
REQUEST_DURATION_US = "nv_inference_request_duration_us"
QUEUE_DURATION_US = "nv_inference_queue_duration_us"
COMPUTE_INFER_DURATION_US = "nv_inference_compute_infer_duration_us"
PENDING_REQUESTS = "nv_inference_pending_request_count"
# ninefold's (labels model, version, task).
REQUEST_SECONDS = "ninefold_request_duration_seconds"
QUEUE_SECONDS = "ninefold_queue_duration_seconds"
COMPUTE_SECONDS = "ninefold_compute_duration_seconds"
BATCH_SIZE = "ninefold_batch_size"
MODEL_READY = "ninefold_model_ready"
# GPU (label gpu_uuid), when NVML is present.
GPU_UTILIZATION = "nv_gpu_utilization"
GPU_MEMORY_USED = "nv_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "nv_gpu_memory_total_bytes"


class ServingCollector(Collector):
    """Renders every model's statistics and readiness; `attach` points it at a ModelManager."""

    def __init__(self) -> None:
        self._manager: ModelManager | None = None

    def attach(self, manager: ModelManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        if self._manager is None:
            return
        models = self._manager.models()
        snapshots = [model.stats() for model in models]
        yield from _triton_counters(snapshots)
        yield from _histograms(snapshots)
        ready = GaugeMetricFamily(MODEL_READY, "1 when the model version serves requests, else 0",
                                  labels=["model", "version", "task"])
        for model in models:
            ready.add_metric([model.name, str(model.version), model.task], 1.0 if model.ready else 0.0)
        yield ready


def _triton_counters(snapshots: list[ModelStatsSnapshot]) -> Iterator[Metric]:
    success = Metric(REQUEST_SUCCESS, "Number of successful inference requests, all batch sizes", "counter")
    failure = Metric(REQUEST_FAILURE, "Number of failed inference requests, all batch sizes", "counter")
    count = Metric(INFERENCE_COUNT, "Number of inferences performed (batch items, not requests)", "counter")
    execs = Metric(EXEC_COUNT, "Number of model executions performed (batches)", "counter")
    request_us = Metric(REQUEST_DURATION_US, "Cumulative inference request duration in microseconds", "counter")
    queue_us = Metric(QUEUE_DURATION_US, "Cumulative inference queuing duration in microseconds", "counter")
    compute_us = Metric(COMPUTE_INFER_DURATION_US, "Cumulative compute inference duration in microseconds", "counter")
    pending = GaugeMetricFamily(PENDING_REQUESTS, "Instantaneous number of pending requests awaiting execution",
                                labels=["model", "version"])
    for s in snapshots:
        labels = {"model": s.name, "version": str(s.version)}
        success.add_sample(REQUEST_SUCCESS, labels, s.success.count)
        # Every reason from load on: a healthy model's failure series read 0 rather than not existing.
        failures = dict.fromkeys(FAILURE_REASONS, 0) | s.failures_by_reason
        for reason, value in sorted(failures.items()):
            failure.add_sample(REQUEST_FAILURE, {**labels, "reason": reason}, value)
        count.add_sample(INFERENCE_COUNT, labels, s.inference_count)
        execs.add_sample(EXEC_COUNT, labels, s.execution_count)
        request_us.add_sample(REQUEST_DURATION_US, labels, (s.success.ns + s.fail.ns) // 1000)
        queue_us.add_sample(QUEUE_DURATION_US, labels, s.queue.ns // 1000)
        compute_us.add_sample(COMPUTE_INFER_DURATION_US, labels, s.compute_infer.ns // 1000)
        pending.add_metric([s.name, str(s.version)], s.pending)
    yield from (success, failure, count, execs, request_us, queue_us, compute_us, pending)


def _histograms(snapshots: list[ModelStatsSnapshot]) -> Iterator[Metric]:
    families = (
        (REQUEST_SECONDS, "End-to-end time of a request in the core (validation, queue, compute)", "request_seconds"),
        (QUEUE_SECONDS, "Time a request waited in the model's queue", "queue_seconds"),
        (COMPUTE_SECONDS, "Time of one batch execution (gather inputs, run, split outputs)", "compute_seconds"),
        (BATCH_SIZE, "Items per batch execution", "batch_sizes"),
    )
    for name, documentation, attribute in families:
        family = HistogramMetricFamily(name, documentation, labels=["model", "version", "task"])
        for s in snapshots:
            histogram: HistogramSnapshot = getattr(s, attribute)
            family.add_metric([s.name, str(s.version), s.task], _buckets(histogram), histogram.total)
        yield family


def _buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return buckets


class GpuCollector(Collector):
    """GPU utilisation and memory from NVML (only registered when nvidia-ml-py imports and finds GPUs)."""

    def __init__(self, nvml: Any, handles: Iterable[Any]) -> None:
        self._nvml = nvml
        self._handles = list(handles)

    def collect(self) -> Iterator[Metric]:
        utilization = GaugeMetricFamily(GPU_UTILIZATION, "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"])
        used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU used memory, in bytes", labels=["gpu_uuid"])
        total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU total memory, in bytes", labels=["gpu_uuid"])
        for handle in self._handles:
            uuid = self._nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization.add_metric([uuid], self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            used.add_metric([uuid], float(memory.used))
            total.add_metric([uuid], float(memory.total))
        yield from (utilization, used, total)


COLLECTOR = ServingCollector()
_TRITON_COUNTERS = (
    REQUEST_SUCCESS, REQUEST_FAILURE, INFERENCE_COUNT, EXEC_COUNT,
    REQUEST_DURATION_US, QUEUE_DURATION_US, COMPUTE_INFER_DURATION_US,
)
_registered = False


def exposition() -> bytes:
    """The /metrics text: prometheus_client's, with Triton's counter names kept free of `_total`."""
    text = generate_latest(REGISTRY).decode()
    for name in _TRITON_COUNTERS:
        text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ").replace(
            f"# TYPE {name}_total counter", f"# TYPE {name} counter"
        )
    return text.encode()


def _metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ.get("PATH_INFO") != "/metrics":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"metrics are at /metrics\n"]
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
    return [exposition()]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are frequent; do not log each one."""


def start_metrics_server(host: str, port: int, manager: ModelManager) -> None:
    """Serve /metrics on `host:port` from a daemon thread (plus this process's process_* metrics)."""
    global _registered
    COLLECTOR.attach(manager)
    if not _registered:
        REGISTRY.register(COLLECTOR)
        gpu = _gpu_collector()
        if gpu is not None:
            REGISTRY.register(gpu)
        _registered = True
    server = make_server(host, port, _metrics_app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics http", daemon=True).start()


def _gpu_collector() -> GpuCollector | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return None
    if not count:
        return None
    return GpuCollector(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])
