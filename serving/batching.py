"""Dynamic batching: one queue per model, one worker thread per instance.

A request is a dict of arrays sharing a batch axis 0 (`items` rows). The batcher

* sends work the moment an instance is idle: it never holds a request while an instance is
  free (measured here: waiting to fill a batch halves throughput at low concurrency);
* batches what queued while every instance was busy, up to `max_batch_size` items, taking
  only requests whose per-item shapes and dtypes match the first one (others keep their place);
* with a ladder (fixed-shape GPU instances, serving.ladder) cuts a batch back to a batch size it
  fills exactly rather than pad it far;
* waits up to `max_queue_delay` only when preferred batch sizes are configured and the queue
  is within a quarter of the next preferred size (so a nearly full batch is worth the wait);
* fails at once with ResourceExhausted when `max_queue_size` requests are already waiting;
* drops requests whose deadline passed before compute (DeadlineExceeded) and requests whose
  caller went away (cancelled futures);
* hands each batch to the instance that has been idle longest (instances run one batch at a
  time, so idle = least busy), in that instance's own thread: ONNX Runtime and TensorRT release
  the GIL, so instances compute in parallel while the event loop keeps serving;
* checks that every output has as many rows as the batch, splits outputs back per request
  (views, no copies);
* isolates a failure: when the backend fails on a batch of several requests, it runs each half
  again (halves of halves, down to single requests), so only a request the model cannot take
  fails (RejectedInput, reason "rejected_input") and its neighbours get their answers; a request
  that fails alone, or a batch whose every part fails, is Internal (reason "backend").

It imports neither grpc nor a runtime: a `Runner` is anything with
`infer(dict[str, ndarray]) -> dict[str, ndarray]`. All queue state lives on the event-loop
thread; worker threads only run `Runner.infer` and post the result back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.deferred import DeferredRows
from serving.errors import (
    DeadlineExceeded,
    Internal,
    RejectedInput,
    ResourceExhausted,
    ServingError,
    Unavailable,
)
from serving.ladder import requests_to_take

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]
#: A request's inputs: arrays, or rows written on the instance thread (serving.deferred).
Tensors = Mapping[str, np.ndarray | DeferredRows]

#: How many incompatible requests a batch may look past before it stops searching the queue.
_MAX_SKIPPED = 64


class Runner(Protocol):
    """What an instance executes: a backend session pinned to one device."""

    def infer(self, inputs: Arrays) -> dict[str, np.ndarray]: ...


#: A runner's own memory for `rows` rows of one input (name, rows, item shape, dtype), or None: where
#: deferred rows are written so that they need no copy before the run
#: (serving.backends.fixed_shapes.FixedShapeBackend.batch_buffer). Optional on a runner.
BatchBuffer = Callable[[str, int, tuple[int, ...], np.dtype], np.ndarray | None]


class BatchObserver(Protocol):
    """Receives queue and execution events on the event-loop thread (see serving.stats)."""

    def on_enqueued(self) -> None: ...

    def on_dequeued(self, queue_ns: int) -> None: ...

    def on_batch(
        self, requests: int, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None: ...


@dataclass(frozen=True)
class BatchPolicy:
    """The batching part of a model's config.pbtxt, in the units the batcher uses.

    max_batch_size: most items per execution; 0 = the model has no batch axis, so every request
      runs alone and unchanged (Triton's meaning).
    combines: requests may share an execution (config.pbtxt has a `dynamic_batching` block). False
      = Triton's default scheduler: each request runs alone, whatever its batch size.
    preferred_batch_sizes: sizes worth waiting for (ascending); empty = never wait.
    max_queue_delay_s: the longest a request waits for a preferred size to fill up.
    max_queue_size: requests allowed to wait; 0 = unbounded.
    default_timeout_s: per-request queue timeout when > 0 (combined with the caller's deadline).
    """

    max_batch_size: int
    combines: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 0
    default_timeout_s: float = 0.0

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0


class _Request:
    """One caller's slice of work while it waits; lives on the event-loop thread only."""

    __slots__ = ("inputs", "items", "key", "deadline", "enqueued_ns", "future")

    def __init__(
        self, inputs: Tensors, items: int, key: tuple, deadline: float, future: asyncio.Future
    ) -> None:
        self.inputs = inputs
        self.items = items
        self.key = key
        self.deadline = deadline
        self.enqueued_ns = time.perf_counter_ns()
        self.future = future


class _Instance:
    """One runner and the thread that feeds it, one batch at a time."""

    def __init__(self, name: str, runner: Runner) -> None:
        self.name = name
        self.runner = runner
        self.jobs: queue.SimpleQueue[tuple[list[_Request], int] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None


class DynamicBatcher:
    """The queue in front of one model version's instances.

    `submit` must be awaited on the loop the batcher was started on. Results are views into the
    batch's output arrays: treat them as read-only. With a `ladder` (the batch sizes fixed-shape
    instances run, serving.ladder) a batch is cut back to a rung it fills rather than padded far.
    """

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        runners: Sequence[Runner],
        observer: BatchObserver,
        ladder: Sequence[int] = (),
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self.policy = policy
        self._observer = observer
        self._ladder = tuple(ladder)
        self._instances = [_Instance(f"{name}#{index}", runner) for index, runner in enumerate(runners)]
        self._idle: deque[_Instance] = deque()
        self._queue: deque[_Request] = deque()
        self._queued_items = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    @property
    def queued(self) -> int:
        """Requests waiting (not yet handed to an instance)."""
        return len(self._queue)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start one worker thread per instance; results are posted to `loop` (default: running)."""
        self._loop = loop or asyncio.get_running_loop()
        for instance in self._instances:
            instance.thread = threading.Thread(
                target=self._work, args=(instance,), name=f"instance {instance.name}", daemon=True
            )
            instance.thread.start()
            self._idle.append(instance)

    async def submit(self, inputs: Tensors, items: int, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run `inputs` (`items` rows on axis 0 of every array) through the model.

        `deadline` is absolute `time.monotonic()` seconds, None = no deadline. A request larger
        than max_batch_size is split into chunks that are batched independently.
        Raises ResourceExhausted (queue full), DeadlineExceeded, Unavailable (closed), Internal.
        """
        limit = self.policy.max_batch_size
        if limit and items > limit:
            return await self._submit_chunked(inputs, items, deadline)
        return await self._enqueue(inputs, items, deadline)

    async def _submit_chunked(
        self, inputs: Tensors, items: int, deadline: float | None
    ) -> dict[str, np.ndarray]:
        limit = self.policy.max_batch_size
        chunks: list[asyncio.Future] = []
        try:
            for start in range(0, items, limit):
                chunk = {name: array[start : start + limit] for name, array in inputs.items()}
                chunks.append(self._enqueue(chunk, min(limit, items - start), deadline))
        except ServingError:
            for future in chunks:  # all or nothing: the queued chunks leave without being computed
                future.cancel()
            raise
        outcomes = await asyncio.gather(*chunks, return_exceptions=True)
        parts: list[dict[str, np.ndarray]] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            parts.append(outcome)
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _enqueue(self, inputs: Tensors, items: int, deadline: float | None) -> asyncio.Future:
        if self._closed or self._loop is None:
            raise Unavailable(f"model '{self.name}' is not accepting requests (unloading or not started)")
        policy = self.policy
        if policy.max_queue_size and len(self._queue) >= policy.max_queue_size:
            raise ResourceExhausted(
                f"model '{self.name}' queue is full ({policy.max_queue_size} requests waiting); "
                "retry later or add instances"
            )
        effective = math.inf if deadline is None else deadline
        now = time.monotonic()
        if policy.default_timeout_s > 0:
            effective = min(effective, now + policy.default_timeout_s)
        if effective <= now:
            raise DeadlineExceeded(f"the deadline passed before the request reached model '{self.name}'")
        future = self._loop.create_future()
        key = tuple((name, array.shape[1:], array.dtype) for name, array in inputs.items()) if policy.combines else ()
        self._queue.append(_Request(inputs, items, key, effective, future))
        self._queued_items += items
        self._observer.on_enqueued()
        self._dispatch()
        return future

    # ------------------------------------------------------------------ event-loop side
    def _dispatch(self) -> None:
        while self._queue and self._idle:
            if self._should_wait():
                return
            batch, total = self._take_batch()
            if batch:
                self._idle.popleft().jobs.put((batch, total))

    def _should_wait(self) -> bool:
        """True (and a timer armed) when a preferred batch size is nearly reached and worth waiting for."""
        policy = self.policy
        if not policy.preferred_batch_sizes or policy.max_queue_delay_s <= 0:
            return False
        queued = self._queued_items
        target = next((size for size in policy.preferred_batch_sizes if size > queued), None)
        if target is None or queued in policy.preferred_batch_sizes or queued < target - max(1, target // 4):
            return False
        waited_s = (time.perf_counter_ns() - self._queue[0].enqueued_ns) * 1e-9
        remaining = policy.max_queue_delay_s - waited_s
        if remaining <= 0:
            return False
        if self._timer is None:
            self._timer = self._loop.call_later(remaining, self._on_timer)  # type: ignore[union-attr]
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> tuple[list[_Request], int]:
        """Pop the head and every later compatible request that fits; expire dead ones on the way."""
        now = time.monotonic()
        limit = self.policy.max_batch_size if self.policy.combines else 0  # the head always leaves
        batch: list[_Request] = []
        total = 0
        key = None
        kept: list[_Request] = []
        while self._queue and (not batch or total < limit):
            request = self._queue.popleft()
            if not self._is_live(request, now):
                continue
            if key is None:
                key = request.key
            elif request.key != key or total + request.items > limit:
                kept.append(request)
                if len(kept) >= _MAX_SKIPPED:
                    break
                continue
            batch.append(request)
            total += request.items
        if self._ladder and len(batch) > 1:
            take = requests_to_take([request.items for request in batch], self._ladder)
            kept[:0] = batch[take:]  # they lead the next batch
            del batch[take:]
        for request in batch:
            self._queued_items -= request.items
            self._observer.on_dequeued(time.perf_counter_ns() - request.enqueued_ns)
        self._queue.extendleft(reversed(kept))
        return batch, sum(request.items for request in batch)

    def _is_live(self, request: _Request, now: float) -> bool:
        """False (and the request finished) when its caller left or its deadline passed."""
        if request.future.done():  # the caller was cancelled
            self._drop(request)
            return False
        if request.deadline <= now:
            waited_ms = (time.perf_counter_ns() - request.enqueued_ns) / 1e6
            request.future.set_exception(
                DeadlineExceeded(
                    f"the deadline passed after {waited_ms:.1f} ms in model '{self.name}' queue, before compute"
                )
            )
            self._drop(request)
            return False
        return True

    def _drop(self, request: _Request) -> None:
        self._queued_items -= request.items
        self._observer.on_dequeued(time.perf_counter_ns() - request.enqueued_ns)

    def _complete(self, instance: _Instance, batch: list[_Request], outcome: _Outcome) -> None:
        for request, result in zip(batch, outcome.results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, ServingError):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
        if outcome.computed_requests:
            self._observer.on_batch(outcome.computed_requests, outcome.computed_items, *outcome.timings_ns)
        if not self._closed:
            self._idle.append(instance)
            self._dispatch()

    # ------------------------------------------------------------------ worker-thread side
    def _work(self, instance: _Instance) -> None:
        loop = self._loop
        assert loop is not None
        while (job := instance.jobs.get()) is not None:
            batch, total = job
            outcome = self._execute(instance, batch, total)
            try:
                loop.call_soon_threadsafe(self._complete, instance, batch, outcome)
            except RuntimeError:  # the loop closed under us: nobody is waiting any more
                return

    def _execute(self, instance: _Instance, batch: list[_Request], total: int) -> _Outcome:
        """Gather the batch's inputs (writing deferred rows), run it, split the outputs per request."""
        started = time.perf_counter_ns()
        try:
            inputs, failures = _gather(batch, total, getattr(instance.runner, "batch_buffer", None))
            running = [request for request in batch if request not in failures] if failures else batch
            items = sum(request.items for request in running)
            if not running:
                return _Outcome([failures[request] for request in batch])
            gathered = time.perf_counter_ns()
            try:
                outputs = instance.runner.infer(inputs)
            except ServingError:
                raise
            except Exception:  # a runtime error: find the request(s) it comes from
                ran = self._run_in_halves(instance, running, inputs)
                timings = (gathered - started, time.perf_counter_ns() - gathered, 0)
                return self._isolated(batch, failures, running, ran, timings)
            inferred = time.perf_counter_ns()
            split = iter(self._split(outputs, running, items))
        except ServingError as error:
            return _Outcome([error] * len(batch))
        results = [failures[request] if request in failures else next(split) for request in batch]
        timings = (gathered - started, inferred - gathered, time.perf_counter_ns() - inferred)
        return _Outcome(results, len(running), items, timings)

    def _run_in_halves(
        self, instance: _Instance, requests: list[_Request], inputs: dict[str, np.ndarray]
    ) -> list[dict[str, np.ndarray] | ServingError]:
        """After the backend failed on `requests` (their rows, in order, are `inputs`): run each half
        again, halves of halves down to single requests, so that a request the model cannot take
        fails alone and the others get their answers. A request that fails alone is Internal here."""
        if len(requests) == 1:
            log.exception("instance %s failed on a request of %d item(s)", instance.name, requests[0].items)
            return [Internal(f"model '{self.name}' failed to run this batch; see the server log")]
        log.warning("instance %s failed on a batch of %d requests; running it again in halves",
                    instance.name, len(requests))
        middle = len(requests) // 2
        rows = sum(request.items for request in requests[:middle])
        results: list[dict[str, np.ndarray] | ServingError] = []
        for part, part_inputs in (
            (requests[:middle], {name: array[:rows] for name, array in inputs.items()}),
            (requests[middle:], {name: array[rows:] for name, array in inputs.items()}),
        ):
            try:
                outputs = instance.runner.infer(part_inputs)
                results += self._split(outputs, part, sum(request.items for request in part))
            except ServingError as error:
                results += [error] * len(part)
            except Exception:
                results += self._run_in_halves(instance, part, part_inputs)
        return results

    def _isolated(
        self,
        batch: list[_Request],
        failures: dict[_Request, ServingError],
        running: list[_Request],
        ran: list[dict[str, np.ndarray] | ServingError],
        timings: tuple[int, int, int],
    ) -> _Outcome:
        """The outcome of a batch run again in halves. When some of its requests succeeded the model
        works, so each one that failed alone is RejectedInput (its values); otherwise all stay Internal."""
        computed = [request for request, result in zip(running, ran, strict=True) if isinstance(result, dict)]
        if computed:
            rejected = RejectedInput(
                f"model '{self.name}' could not compute this request while the requests batched with it "
                "succeeded: its input values are ones this model cannot take (the server log has the "
                "runtime's message)"
            )
            ran = [rejected if isinstance(result, Internal) else result for result in ran]
        results = iter(ran)
        outcomes = [failures[request] if request in failures else next(results) for request in batch]
        return _Outcome(outcomes, len(computed), sum(request.items for request in computed), timings)

    def _split(
        self, outputs: dict[str, np.ndarray], batch: list[_Request], total: int
    ) -> list[dict[str, np.ndarray]]:
        if not self.policy.batches:
            return [outputs]
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise Internal(
                    f"model '{self.name}' output '{name}' has {array.shape[0] if array.ndim else 0} rows "
                    f"for a batch of {total}; the model must keep the batch axis"
                )
        if len(batch) == 1:
            return [outputs]
        results = []
        start = 0
        for request in batch:
            stop = start + request.items
            results.append({name: array[start:stop] for name, array in outputs.items()})
            start = stop
        return results

    async def close(self) -> None:
        """Refuse new work, fail what still waits, let running batches finish, stop the threads."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(Unavailable(f"model '{self.name}' was unloaded"))
            self._drop(request)
        for instance in self._instances:
            instance.jobs.put(None)
        threads = [i.thread for i in self._instances if i.thread is not None]
        await asyncio.get_running_loop().run_in_executor(None, _join_all, threads)


def _join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()


@dataclass(frozen=True)
class _Outcome:
    """What one execution produced for each request of its batch (same order): outputs or an error."""

    results: list[dict[str, np.ndarray] | ServingError]
    computed_requests: int = 0
    computed_items: int = 0
    timings_ns: tuple[int, int, int] = (0, 0, 0)


def _gather(
    batch: list[_Request], total: int, batch_buffer: BatchBuffer | None = None
) -> tuple[dict[str, np.ndarray], dict[_Request, ServingError]]:
    """The batch's input arrays, deferred rows written in place (into the runner's `batch_buffer` when it
    has one); requests whose rows failed are left out.

    A lone array request passes through untouched; arrays of several requests are concatenated.
    """
    failures: dict[_Request, ServingError] = {}
    inputs: dict[str, np.ndarray] = {}
    for name in batch[0].inputs:
        parts = [request.inputs[name] for request in batch]
        arrays = [part for part in parts if isinstance(part, np.ndarray)]
        if len(arrays) == len(parts):
            inputs[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            continue
        item_shape, dtype = tuple(parts[0].shape[1:]), parts[0].dtype
        out = batch_buffer(name, total, item_shape, dtype) if batch_buffer is not None else None
        if out is None:
            out = np.empty((total, *item_shape), dtype=dtype)
        start = 0
        for request, part in zip(batch, parts, strict=True):
            rows = out[start : start + request.items]
            start += request.items
            if isinstance(part, DeferredRows):
                try:
                    part.write_into(rows)
                except ServingError as error:
                    failures.setdefault(request, error)
            else:
                rows[...] = part
        inputs[name] = out
    if failures:
        keep = np.concatenate([np.full(r.items, r not in failures) for r in batch])
        inputs = {name: array[keep] for name, array in inputs.items()}
    return inputs, failures
