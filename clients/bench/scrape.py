"""Read the server's own figures: batching from its Prometheus `/metrics`, CPU time from /proc."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class BatchCounters:
    """Triton's counters for one model: items inferred and batch executions run."""

    inferences: float
    executions: float


def read_batch_counters(metrics_url: str, model: str, timeout_s: float = 5.0) -> BatchCounters:
    """Sum `nv_inference_count` and `nv_inference_exec_count` over versions of `model`."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    totals = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in totals and sample.labels.get("model") == model:
                totals[name] += sample.value
    return BatchCounters(totals["nv_inference_count"], totals["nv_inference_exec_count"])


def average_batch_size(before: BatchCounters, after: BatchCounters) -> float | None:
    """Items per execution between two readings; None when nothing ran in between."""
    executions = after.executions - before.executions
    if executions <= 0:
        return None
    return (after.inferences - before.inferences) / executions


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a local process so far (Linux /proc), all of its threads.

    CPU per request is the figure that survives a shared machine: throughput moves with what
    else runs, the work a request costs the server much less.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
