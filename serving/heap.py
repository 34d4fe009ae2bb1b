"""Give memory the process freed back to the operating system (glibc's allocator keeps it otherwise).

gRPC receives every message into buffers malloc'd by its own threads, and glibc keeps what a
thread frees in that thread's arena for reuse; it returns memory to the system only from the top
of a heap. gRPC reads an oversize message whole before refusing it, so 60 requests over
--max-message-bytes left a server at 517 MB instead of 128 MB, for good. A daemon thread calls
`malloc_trim(0)` every TRIM_INTERVAL_S seconds, which returns the free pages of every arena
(milliseconds for a heap of hundreds of MB). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

#: Seconds between two trims: RSS comes back down this long after a burst of large messages.
TRIM_INTERVAL_S = 5.0


def start_trimming(interval_s: float = TRIM_INTERVAL_S) -> threading.Event | None:
    """Start the trimming thread; returns the event that stops it, or None without glibc."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        log.info("no glibc malloc_trim here: freed memory stays with the allocator")
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            trim(0)

    threading.Thread(target=run, name="heap trim", daemon=True).start()
    return stop
