"""Summaries of load points: throughput, latency percentiles, repeated-run medians and spread."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from clients.bench.loadgen import Samples


@dataclass(frozen=True)
class PointSummary:
    """One load point: `throughput` in successful requests per second, latencies in ms."""

    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    completed: int
    errors: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarise(samples: Samples) -> PointSummary:
    """Percentiles over successful requests; an all-failed point reports NaN latencies."""
    latencies = np.asarray(samples.latencies_s, dtype=np.float64) * 1e3
    if latencies.size:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        worst = float(latencies.max())
    else:
        p50 = p90 = p99 = worst = float("nan")
    return PointSummary(
        throughput=latencies.size / samples.window_s if samples.window_s > 0 else 0.0,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=worst,
        completed=int(latencies.size),
        errors=dict(samples.errors),
    )


@dataclass(frozen=True)
class Repeated:
    """The median of repeated runs of one point, with the spread (max - min) of each figure."""

    median: PointSummary
    spread: dict[str, float]
    runs: tuple[PointSummary, ...]

    def as_dict(self) -> dict[str, object]:
        return {"median": self.median.as_dict(), "spread": self.spread, "runs": [r.as_dict() for r in self.runs]}


_FIGURES = ("throughput", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def combine(runs: list[PointSummary]) -> Repeated:
    """Median per figure across runs (not the run with the median throughput), errors summed."""
    if not runs:
        raise ValueError("no runs to combine")
    medians = {f: float(np.median([getattr(r, f) for r in runs])) for f in _FIGURES}
    spread = {f: float(np.ptp([getattr(r, f) for r in runs])) for f in _FIGURES}
    errors: dict[str, int] = {}
    for run in runs:
        for code, count in run.errors.items():
            errors[code] = errors.get(code, 0) + count
    median = PointSummary(
        completed=int(np.median([r.completed for r in runs])), errors=errors, **medians
    )
    return Repeated(median=median, spread=spread, runs=tuple(runs))
