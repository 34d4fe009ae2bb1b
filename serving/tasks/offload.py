"""Run CPU-heavy image work off the event loop, but only when it is heavy enough to pay.

A hop to a worker thread costs as much as decoding a small JPEG (figures: docs/PERFORMANCE.md).
So a request's image work runs inline on the event loop when its pixel count is small, and
otherwise in the pool as at most IMAGE_WORKERS jobs (never one job per image). Pillow and NumPy
release the GIL while they decode, resize and compute, so the pool's threads run in parallel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from serving.cpus import available_cpus

T = TypeVar("T")

#: Work below this many pixels (summed over a request) runs inline: its decoding costs less than a
#: thread hop plus the scheduling delay it adds under load.
INLINE_PIXEL_BUDGET = 128 * 128

#: Threads of the image pool, and the most pieces one request's work is split into: the CPUs this
#: process may use (its cgroup CPU limit in a container, serving.cpus).
IMAGE_WORKERS = available_cpus()


@functools.cache
def _image_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="images")


async def run_image_work(work: Callable[[], T], pixels: int) -> T:
    """Run `work` (one request's decode/encode) inline if `pixels` is small, else in the image pool."""
    if pixels <= INLINE_PIXEL_BUDGET:
        return work()
    return await asyncio.get_running_loop().run_in_executor(_image_pool(), work)


async def run_image_jobs(jobs: Sequence[Callable[[], None]], pixels: int) -> None:
    """Run independent parts of one request's image work: one after another inline when `pixels` is
    small, else side by side in the image pool. The first failure propagates, but only once every
    job has stopped, also when the caller is cancelled: running jobs hold decoded images that the
    caller's decoding budget counts until it returns (serving.decoding_budget)."""
    if pixels <= INLINE_PIXEL_BUDGET:
        for job in jobs:
            job()
        return
    pool = _image_pool()
    running = [pool.submit(job) for job in jobs]
    try:
        await asyncio.gather(*(asyncio.wrap_future(future) for future in running))
    finally:  # a job not started yet was cancelled with the caller; one already decoding finishes
        if not all(future.done() for future in running):
            await asyncio.get_running_loop().run_in_executor(None, concurrent.futures.wait, running)
