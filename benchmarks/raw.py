"""The limit: the same classify work in one process, no network, no server, no queue.

`measure_raw` times ClassifyPipeline on N copies of one JPEG: latency percentiles at batch 1 and
throughput at each batch size, so the best batch size is found rather than assumed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks.pipeline import ClassifyPipeline


@dataclass(frozen=True)
class RawResult:
    """p50 latency at batch 1 (ms) and images/s per batch size; the best of those; the process's CPU
    time per image (all threads, microseconds) per batch size."""

    p50_ms_batch1: float
    p99_ms_batch1: float
    images_per_s: dict[int, float] = field(default_factory=dict)
    cpu_us_per_image: dict[int, float] = field(default_factory=dict)

    @property
    def best_batch_size(self) -> int:
        return max(self.images_per_s, key=self.images_per_s.__getitem__)

    @property
    def best_images_per_s(self) -> float:
        return self.images_per_s[self.best_batch_size]

    def as_dict(self) -> dict[str, object]:
        return {
            "p50_ms_batch1": self.p50_ms_batch1,
            "p99_ms_batch1": self.p99_ms_batch1,
            "images_per_s": {str(k): v for k, v in self.images_per_s.items()},
            "best_batch_size": self.best_batch_size,
            "best_images_per_s": self.best_images_per_s,
            "cpu_us_per_image": {str(k): v for k, v in self.cpu_us_per_image.items()},
        }


def _timed_runs(pipeline: ClassifyPipeline, jpegs: list[bytes], seconds: float) -> list[float]:
    pipeline(jpegs)  # warm-up: first runs allocate
    durations: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(durations) < 3:
        began = time.perf_counter()
        pipeline(jpegs)
        durations.append(time.perf_counter() - began)
    return durations


def measure_raw(
    pipeline: ClassifyPipeline, jpeg: bytes, batch_sizes: Sequence[int], seconds_per_size: float
) -> RawResult:
    """Batch 1 latency from every run at batch 1; throughput = images / median run time per size."""
    images_per_s: dict[int, float] = {}
    cpu_us: dict[int, float] = {}
    p50 = p99 = float("nan")
    for size in batch_sizes:
        cpu_before = time.process_time()
        durations = np.asarray(_timed_runs(pipeline, [jpeg] * size, seconds_per_size))
        cpu_us[size] = (time.process_time() - cpu_before) / ((len(durations) + 1) * size) * 1e6  # + the warm-up
        images_per_s[size] = size / float(np.median(durations))
        if size == 1:
            p50, p99 = (float(v) for v in np.percentile(durations * 1e3, [50, 99]))
    return RawResult(p50_ms_batch1=p50, p99_ms_batch1=p99, images_per_s=images_per_s, cpu_us_per_image=cpu_us)
