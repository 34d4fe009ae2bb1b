"""serving.heap: memory freed inside glibc's heap goes back to the system within a trim interval."""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import pytest

from serving.heap import start_trimming

MB = 1024 * 1024
CHUNK = 64 * 1024  # under glibc's mmap threshold: served from the heap, as gRPC's read buffers are


def resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def libc() -> ctypes.CDLL:
    try:
        library = ctypes.CDLL("libc.so.6")
        library.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    library.malloc.restype, library.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    library.free.argtypes = [ctypes.c_void_p]
    return library


def test_a_heap_freed_by_another_thread_is_kept_until_a_trim_returns_it(libc: ctypes.CDLL) -> None:
    pinned: list[int] = []

    def churn() -> None:
        """Fill 128 MB of a thread's heap, then free all of it but the last chunk (which pins the top)."""
        chunks = [libc.malloc(CHUNK) for _ in range(128 * MB // CHUNK)]
        for chunk in chunks:
            ctypes.memset(chunk, 1, CHUNK)
        for chunk in chunks[:-1]:
            libc.free(chunk)
        pinned.append(chunks[-1])

    before = resident()
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    kept = resident() - before
    assert kept > 100 * MB  # glibc keeps the freed memory: the cause of the server's growth
    stop = start_trimming(interval_s=0.05)
    assert stop is not None
    try:
        give_up = time.monotonic() + 10
        while resident() - before > 16 * MB and time.monotonic() < give_up:
            time.sleep(0.05)
        assert resident() - before <= 16 * MB
    finally:
        stop.set()
        libc.free(pinned[0])
