"""The load generator counts what it should: only the measured window, failures by code."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clients.bench.loadgen import Samples, run_closed_loop, run_open_loop
from clients.bench.stats import combine, summarise


class _Flaky:
    """An async call that fails every third time with a gRPC-like code."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(0.001)
        if self.calls % 3 == 0:
            raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, None, None, "queue full")


def test_closed_loop_records_successes_and_failures_by_status_code() -> None:
    call = _Flaky()
    samples = asyncio.run(run_closed_loop(call, concurrency=4, duration_s=0.3, warmup_s=0.05))
    total = len(samples.latencies_s) + sum(samples.errors.values())
    assert set(samples.errors) == {"RESOURCE_EXHAUSTED"}
    # warm-up requests ran but are not counted
    assert 0 < total < call.calls
    assert all(latency > 0 for latency in samples.latencies_s)


def test_open_loop_sends_on_schedule_regardless_of_answers() -> None:
    async def slow() -> None:
        await asyncio.sleep(0.05)  # slower than the send interval: requests overlap

    samples = asyncio.run(run_open_loop(slow, rate_per_s=200, duration_s=0.25, warmup_s=0.0))
    assert 40 <= len(samples.latencies_s) <= 50
    assert samples.errors == {}


def test_open_loop_reports_client_saturation_instead_of_slowing_down() -> None:
    async def stuck() -> None:
        await asyncio.sleep(0.2)

    samples = asyncio.run(run_open_loop(stuck, rate_per_s=500, duration_s=0.1, warmup_s=0.0, max_outstanding=5))
    assert samples.errors.get("CLIENT_SATURATED", 0) > 0


def test_summary_percentiles_and_repeated_medians() -> None:
    first = summarise(Samples(tuple(i / 1000 for i in range(1, 101)), {}, window_s=2.0))
    assert first.throughput == pytest.approx(50.0)
    assert first.p50_ms == pytest.approx(50.5)
    assert first.max_ms == pytest.approx(100.0)
    second = summarise(Samples(tuple(i / 1000 for i in range(1, 51)), {"UNAVAILABLE": 2}, window_s=1.0))
    third = summarise(Samples((), {"UNAVAILABLE": 1}, window_s=1.0))
    assert third.completed == 0
    combined = combine([first, second, summarise(Samples((0.01,) * 75, {}, window_s=1.5))])
    assert combined.median.throughput == pytest.approx(50.0)
    assert combined.spread["throughput"] == pytest.approx(0.0)
    assert combined.median.errors == {"UNAVAILABLE": 2}
