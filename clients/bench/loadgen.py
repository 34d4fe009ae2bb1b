"""Closed- and open-loop load generation against any awaitable call.

The generator knows nothing of gRPC or of the system under test: a target hands it a
zero-argument coroutine factory that performs one pre-built request and raises on failure.
Time comes from `time.perf_counter` (monotonic), and only requests that *start* inside the
measured window count, so warm-up traffic never leaks into the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Call = Callable[[], Awaitable[object]]
ErrorCode = Callable[[BaseException], str]


@dataclass(frozen=True)
class Samples:
    """What one load point produced: latencies of successful requests and failures by code."""

    latencies_s: tuple[float, ...]
    errors: dict[str, int]
    window_s: float


def _default_code(error: BaseException) -> str:
    code = getattr(error, "code", None)
    if callable(code):
        return str(getattr(code(), "name", code()))
    return type(error).__name__


class _Recorder:
    """Collects outcomes of requests that started inside [start, stop)."""

    def __init__(self, start: float, stop: float, error_code: ErrorCode) -> None:
        self.start, self.stop = start, stop
        self._error_code = error_code
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    async def timed(self, call: Call) -> None:
        began = time.perf_counter()
        try:
            await call()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # every failure is a data point, never a crash of the run
            if self.start <= began < self.stop:
                code = self._error_code(error)
                self.errors[code] = self.errors.get(code, 0) + 1
            return
        if self.start <= began < self.stop:
            self.latencies.append(time.perf_counter() - began)

    def samples(self) -> Samples:
        return Samples(tuple(self.latencies), dict(self.errors), self.stop - self.start)


async def run_closed_loop(
    call: Call,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    error_code: ErrorCode = _default_code,
) -> Samples:
    """`concurrency` workers, each sending its next request the moment the last one answers."""
    now = time.perf_counter()
    recorder = _Recorder(now + warmup_s, now + warmup_s + duration_s, error_code)

    async def worker() -> None:
        while time.perf_counter() < recorder.stop:
            await recorder.timed(call)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder.samples()


async def run_open_loop(
    call: Call,
    rate_per_s: float,
    duration_s: float,
    warmup_s: float,
    max_outstanding: int = 1024,
    error_code: ErrorCode = _default_code,
) -> Samples:
    """Requests start on a fixed schedule (`rate_per_s`), whether or not earlier ones answered.

    Open loop shows queueing that a closed loop hides: latency is measured from the scheduled
    send time, so a server that falls behind is charged for it (no coordinated omission).
    Past `max_outstanding` in flight, a send is counted as the error `CLIENT_SATURATED`.
    """
    if rate_per_s <= 0:
        raise ValueError("rate must be positive")
    interval = 1.0 / rate_per_s
    now = time.perf_counter()
    recorder = _Recorder(now + warmup_s, now + warmup_s + duration_s, error_code)
    in_flight: set[asyncio.Task[None]] = set()

    async def scheduled(at: float) -> None:
        try:
            await call()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if recorder.start <= at < recorder.stop:
                code = error_code(error)
                recorder.errors[code] = recorder.errors.get(code, 0) + 1
            return
        if recorder.start <= at < recorder.stop:
            recorder.latencies.append(time.perf_counter() - at)

    index = 0
    while True:
        at = now + index * interval
        if at >= recorder.stop:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_outstanding:
            if at >= recorder.start:
                recorder.errors["CLIENT_SATURATED"] = recorder.errors.get("CLIENT_SATURATED", 0) + 1
        else:
            task = asyncio.ensure_future(scheduled(at))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        index += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    return recorder.samples()
