"""The dynamic batcher on real ONNX Runtime sessions (tiny graphs built with onnx.helper).

`GatedRunner` wraps a real backend with a gate the test opens, so "the instance is busy while
these requests arrive" is a fact of the test, not a race against the clock.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from serving.backends import BackendSettings
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.batching import BatchPolicy, DynamicBatcher
from serving.deferred import DeferredRows
from serving.errors import DeadlineExceeded, Internal, InvalidArgument, RejectedInput, ResourceExhausted
from serving.placement import CPU
from serving.stats import ModelStatistics
from tests.serving.core_models import batch_dropping_graph, doubler_graph, lookup_graph, save


class GatedRunner:
    """A real ONNX Runtime session that waits for `gate` before each run and records batch sizes."""

    def __init__(self, path: Path, gated: bool = True) -> None:
        self.backend = OnnxRuntimeBackend(path, CPU, BackendSettings(), threads=1)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Semaphore(0)
        self.batch_sizes: list[int] = []

    def infer(self, inputs):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(next(iter(inputs.values())).shape[0])
        self.started.release()
        self.gate.wait()
        return self.backend.infer(inputs)

    async def wait_started(self) -> None:
        """Until the instance has picked up one more batch."""
        await asyncio.get_running_loop().run_in_executor(None, self.started.acquire)


@pytest.fixture
def doubler(tmp_path: Path) -> Path:
    return save(doubler_graph(), tmp_path / "doubler.onnx")


@pytest.fixture
def dynamic_doubler(tmp_path: Path) -> Path:
    return save(doubler_graph("width"), tmp_path / "dynamic_doubler.onnx")


def on_event_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no asyncio plugin needed; fixtures still resolve)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def rows(count: int, value: float = 1.0, width: int = 4) -> np.ndarray:
    return np.full((count, width), value, dtype=np.float32)


def batcher_for(policy: BatchPolicy, *runners: GatedRunner) -> tuple[DynamicBatcher, ModelStatistics]:
    stats = ModelStatistics("doubler", 1, "")
    batcher = DynamicBatcher("doubler", policy, list(runners), stats)
    batcher.start()
    return batcher, stats


@on_event_loop
async def test_requests_queued_while_the_instance_is_busy_run_as_one_batch(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8), runner)
    first = asyncio.ensure_future(batcher.submit({"x": rows(1, 0.5)}, 1))
    await runner.wait_started()
    waiting = [asyncio.ensure_future(batcher.submit({"x": rows(1, float(i))}, 1)) for i in range(5)]
    await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert runner.batch_sizes == [1, 5]
    assert [float(r["y"][0, 0]) for r in results] == [1.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    snapshot = stats.snapshot()
    assert (snapshot.execution_count, snapshot.inference_count) == (2, 6)
    assert [(b.batch_size, b.compute_infer.count) for b in snapshot.batch_stats] == [(1, 1), (5, 1)]
    await batcher.close()


@on_event_loop
async def test_a_lone_request_never_waits_for_a_preferred_batch(doubler: Path) -> None:
    runner = GatedRunner(doubler, gated=False)
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=30.0)
    batcher, _ = batcher_for(policy, runner)
    result = await asyncio.wait_for(batcher.submit({"x": rows(1)}, 1), timeout=20)
    assert result["y"].tolist() == [[2.0] * 4]
    await batcher.close()


@on_event_loop
async def test_a_nearly_full_preferred_batch_waits_for_its_last_request(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=30.0)
    batcher, _ = batcher_for(policy, runner)
    busy = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    three = [asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1)) for _ in range(3)]
    await asyncio.sleep(0)
    runner.gate.set()
    await busy
    assert batcher.queued == 3  # 3 of a preferred 4: held for the fourth, not sent
    fourth = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await asyncio.gather(*three, fourth)
    assert runner.batch_sizes == [1, 4]
    await batcher.close()


@on_event_loop
async def test_several_instances_compute_at_the_same_time(doubler: Path) -> None:
    runners = [GatedRunner(doubler), GatedRunner(doubler)]
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=8), *runners)
    requests = [asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1)) for _ in range(2)]
    for runner in runners:  # both instances hold a batch before either is allowed to finish
        await runner.wait_started()
    for runner in runners:
        runner.gate.set()
    await asyncio.gather(*requests)
    assert [r.batch_sizes for r in runners] == [[1], [1]]
    await batcher.close()


@on_event_loop
async def test_a_full_queue_refuses_at_once(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8, max_queue_size=2), runner)
    running = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    queued = [asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit({"x": rows(1)}, 1)
    runner.gate.set()
    await asyncio.gather(running, *queued)
    assert stats.snapshot().pending == 0
    await batcher.close()


@on_event_loop
async def test_requests_past_their_deadline_are_dropped_before_compute(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=8), runner)
    running = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    late = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1, deadline=time.monotonic() + 0.05))
    on_time = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1, deadline=time.monotonic() + 600))
    await asyncio.sleep(0.1)  # the late request's deadline passes while the instance is busy
    runner.gate.set()
    await running
    with pytest.raises(DeadlineExceeded, match="before compute"):
        await late
    await on_time
    assert runner.batch_sizes == [1, 1]  # the expired request never reached the model
    with pytest.raises(DeadlineExceeded):
        await batcher.submit({"x": rows(1)}, 1, deadline=time.monotonic() - 1)
    await batcher.close()


@on_event_loop
async def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs(doubler: Path) -> None:
    runner = GatedRunner(doubler, gated=False)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8), runner)
    with pytest.raises(Internal, match="failed to run"):
        await batcher.submit({"x": rows(1, width=3)}, 1)  # ONNX Runtime rejects width 3
    result = await batcher.submit({"x": rows(2)}, 2)
    assert result["y"].shape == (2, 4)
    assert stats.snapshot().execution_count == 1
    await batcher.close()


def tokens(value: int) -> dict[str, np.ndarray]:
    return {"token": np.array([[value]], dtype=np.int64)}


async def lookups_in_one_batch(path: Path, values: list[int]) -> tuple[GatedRunner, ModelStatistics, list]:
    """Submit one token per value while the lookup model's instance is busy (so they leave as one batch);
    return the runner, the statistics and each request's result or error."""
    runner = GatedRunner(save(lookup_graph(rows=4), path))
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=16), runner)
    busy = asyncio.ensure_future(batcher.submit(tokens(0), 1))
    await runner.wait_started()
    batch = [asyncio.ensure_future(batcher.submit(tokens(value), 1)) for value in values]
    await asyncio.sleep(0)
    runner.gate.set()
    await busy
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    await batcher.close()
    return runner, stats, outcomes


@on_event_loop
async def test_a_request_the_model_cannot_take_fails_alone_and_its_batch_neighbours_succeed(tmp_path: Path) -> None:
    values = [10**9 if index == 6 else index % 4 for index in range(16)]  # one poisoned among 15 good
    runner, stats, outcomes = await lookups_in_one_batch(tmp_path / "lookup.onnx", values)
    assert runner.batch_sizes[:2] == [1, 16]  # all sixteen ran as one batch first
    failed = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [6]
    assert isinstance(outcomes[6], RejectedInput) and outcomes[6].reason == "rejected_input"
    assert [float(outcome["y"][0, 0]) for outcome in outcomes if isinstance(outcome, dict)] == [
        float(value) for value in values if value < 4
    ]
    assert stats.snapshot().inference_count == 1 + 15


@on_event_loop
async def test_a_batch_that_fails_in_every_part_fails_as_a_backend_error(tmp_path: Path) -> None:
    runner, _, outcomes = await lookups_in_one_batch(tmp_path / "lookup.onnx", [-5, -5, -5])
    assert runner.batch_sizes == [1, 3, 1, 2, 1, 1]  # the batch, then its halves down to single requests
    assert all(type(outcome) is Internal and outcome.reason == "backend" for outcome in outcomes)


@on_event_loop
async def test_an_output_without_the_batch_axis_is_an_error(tmp_path: Path) -> None:
    runner = GatedRunner(save(batch_dropping_graph(), tmp_path / "dropper.onnx"), gated=False)
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=8), runner)
    with pytest.raises(Internal, match="must keep the batch axis"):
        await batcher.submit({"x": rows(3)}, 3)
    await batcher.close()


@on_event_loop
async def test_only_requests_of_the_same_item_shape_share_a_batch(dynamic_doubler: Path) -> None:
    runner = GatedRunner(dynamic_doubler)
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=8), runner)
    busy = asyncio.ensure_future(batcher.submit({"x": rows(1, width=2)}, 1))
    await runner.wait_started()
    shapes = [4, 6, 4, 6, 4]
    waiting = [asyncio.ensure_future(batcher.submit({"x": rows(1, width=w)}, 1)) for w in shapes]
    await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(busy, *waiting)
    assert runner.batch_sizes == [1, 3, 2]
    assert [r["y"].shape[1] for r in results[1:]] == shapes


@on_event_loop
async def test_a_request_larger_than_max_batch_size_runs_in_chunks(doubler: Path) -> None:
    runner = GatedRunner(doubler, gated=False)
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=2), runner)
    inputs = np.arange(20, dtype=np.float32).reshape(5, 4)
    result = await batcher.submit({"x": inputs}, 5)
    np.testing.assert_array_equal(result["y"], inputs * 2)
    assert sorted(runner.batch_sizes) == [1, 2, 2]
    await batcher.close()


@on_event_loop
async def test_a_cancelled_request_is_not_computed(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8), runner)
    busy = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    gone = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await asyncio.sleep(0)
    gone.cancel()
    runner.gate.set()
    await busy
    kept = await batcher.submit({"x": rows(1)}, 1)
    assert kept["y"].shape == (1, 4)
    assert runner.batch_sizes == [1, 1]
    assert stats.snapshot().pending == 0
    await batcher.close()



@on_event_loop
async def test_a_chunked_request_that_does_not_fit_the_queue_is_refused_whole(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=2, max_queue_size=2), runner)
    busy = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    with pytest.raises(ResourceExhausted):
        await batcher.submit({"x": rows(6)}, 6)  # three chunks, room for two
    runner.gate.set()
    await busy
    assert (await batcher.submit({"x": rows(1)}, 1))["y"].shape == (1, 4)
    assert runner.batch_sizes == [1, 1]  # the refused request's queued chunks were never computed
    assert stats.snapshot().pending == 0
    await batcher.close()


@on_event_loop
async def test_without_dynamic_batching_queued_requests_run_one_at_a_time(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8, combines=False), runner)
    first = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    waiting = [asyncio.ensure_future(batcher.submit({"x": rows(count, float(count))}, count)) for count in (1, 3, 1)]
    await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert runner.batch_sizes == [1, 1, 3, 1]  # a request keeps its own batch size, never shares a run
    assert [r["y"].shape[0] for r in results] == [1, 1, 3, 1]
    assert float(results[2]["y"][2, 0]) == 6.0
    assert stats.snapshot().execution_count == 4
    await batcher.close()


class RowsWrittenOnTheInstance:
    """Writers for DeferredRows that fill a row with a value and remember which thread wrote it."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def rows(self, *values: float, width: int = 4) -> DeferredRows:
        return DeferredRows((width,), np.dtype(np.float32), tuple(self._writer(v) for v in values))

    def _writer(self, value: float):  # type: ignore[no-untyped-def]
        def write(row: np.ndarray) -> None:
            if value < 0:
                raise InvalidArgument(f"value {value} is negative")
            self.threads.add(threading.current_thread().name)
            row[...] = value

        return write


@on_event_loop
async def test_deferred_rows_are_written_into_one_batch_on_the_instance_thread(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8), runner)
    writers = RowsWrittenOnTheInstance()
    first = asyncio.ensure_future(batcher.submit({"x": writers.rows(0.5)}, 1))
    await runner.wait_started()
    waiting = [
        asyncio.ensure_future(batcher.submit({"x": writers.rows(1.0, 2.0)}, 2)),
        asyncio.ensure_future(batcher.submit({"x": rows(1, 3.0)}, 1)),  # an array request joins the batch
        asyncio.ensure_future(batcher.submit({"x": writers.rows(4.0)}, 1)),
    ]
    await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert runner.batch_sizes == [1, 4]
    assert [r["y"][:, 0].tolist() for r in results] == [[1.0], [2.0, 4.0], [6.0], [8.0]]
    assert writers.threads == {"instance doubler#0"}
    assert stats.snapshot().execution_count == 2
    await batcher.close()


@on_event_loop
async def test_a_failing_row_writer_fails_only_its_request(doubler: Path) -> None:
    runner = GatedRunner(doubler)
    batcher, stats = batcher_for(BatchPolicy(max_batch_size=8), runner)
    writers = RowsWrittenOnTheInstance()
    first = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    good = asyncio.ensure_future(batcher.submit({"x": writers.rows(1.0)}, 1))
    bad = asyncio.ensure_future(batcher.submit({"x": writers.rows(2.0, -1.0)}, 2))
    also_good = asyncio.ensure_future(batcher.submit({"x": writers.rows(3.0)}, 1))
    await asyncio.sleep(0)
    runner.gate.set()
    await first
    assert (await good)["y"][:, 0].tolist() == [2.0]
    assert (await also_good)["y"][:, 0].tolist() == [6.0]
    with pytest.raises(InvalidArgument, match="value -1.0 is negative"):
        await bad
    assert runner.batch_sizes == [1, 2]  # the failed request's rows never reached the model
    snapshot = stats.snapshot()
    assert (snapshot.execution_count, snapshot.inference_count) == (2, 3)
    await batcher.close()


@on_event_loop
async def test_deferred_rows_larger_than_max_batch_size_run_in_chunks(doubler: Path) -> None:
    runner = GatedRunner(doubler, gated=False)
    batcher, _ = batcher_for(BatchPolicy(max_batch_size=2), runner)
    result = await batcher.submit({"x": RowsWrittenOnTheInstance().rows(1.0, 2.0, 3.0, 4.0, 5.0)}, 5)
    assert result["y"][:, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert sorted(runner.batch_sizes) == [1, 2, 2]
    await batcher.close()
