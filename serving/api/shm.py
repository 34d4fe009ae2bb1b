"""System shared memory (Triton's extension): clients register /dev/shm objects by name, then
requests read inputs from and write outputs to them instead of carrying the bytes.

One registry per server, shared by gRPC and HTTP (as in Triton). A key names an object directly
under /dev/shm (POSIX shm_open names: "/name" or "name"); anything else - separators, "..", a
symbolic link, a non-regular file - is refused before or at open, so a key never reaches a path
outside /dev/shm. Every access is checked against the registered window [offset, offset + byte_size),
and no read copies more than a request message may carry (--max-message-bytes), so a huge region
cannot make the server allocate more than a huge message could.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from serving.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

SHM_ROOT = Path("/dev/shm")
#: Most regions registered at once (each holds an open mapping).
MAX_REGIONS = 256
_KEY = re.compile(r"/?[A-Za-z0-9_.-]{1,255}")


@dataclass(frozen=True)
class RegionStatus:
    """What SystemSharedMemoryStatus reports for one region."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class SharedMemoryRef:
    """A request tensor's place in a region: `byte_size` bytes from `offset` (relative to the region)."""

    region: str
    offset: int
    byte_size: int


class _Region:
    def __init__(self, status: RegionStatus, mapping: mmap.mmap) -> None:
        self.status = status
        self.mapping = mapping

    def window(self, ref: SharedMemoryRef, what: str) -> slice:
        if ref.offset < 0 or ref.byte_size < 0 or ref.offset + ref.byte_size > self.status.byte_size:
            raise InvalidArgument(
                f"{what}: {ref.byte_size} bytes at offset {ref.offset} do not fit shared memory region "
                f"'{ref.region}' of {self.status.byte_size} bytes"
            )
        start = self.status.offset + ref.offset
        return slice(start, start + ref.byte_size)


def shm_path(key: str) -> Path:
    """The /dev/shm file of a key; InvalidArgument for any key that is not a plain name there."""
    if not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
        raise InvalidArgument(
            f"shared memory key '{key}' is not a POSIX shared memory name ('/name' of letters, digits, '_', '.', '-')"
        )
    return SHM_ROOT / key.lstrip("/")


class SharedMemoryRegistry:
    """Registered regions by name: register, status, unregister, and checked reads and writes."""

    def __init__(self, max_read_bytes: int) -> None:
        self._regions: dict[str, _Region] = {}
        self._max_read_bytes = max_read_bytes

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise FailedPrecondition(f"shared memory region '{name}' is already registered; unregister it first")
        if len(self._regions) >= MAX_REGIONS:
            raise ResourceExhausted(f"{MAX_REGIONS} shared memory regions are registered; unregister one first")
        if offset < 0 or byte_size < 1:
            raise InvalidArgument(f"shared memory region '{name}': offset must be >= 0 and byte_size >= 1, "
                                  f"got {offset} and {byte_size}")
        mapping = _map(shm_path(key), key, offset + byte_size)
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping)

    def status(self, name: str = "") -> list[RegionStatus]:
        if name:
            return [self._get(name).status]
        return [region.status for region in self._regions.values()]

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or every region when `name` is empty (unknown names are no error, as Triton)."""
        names = [name] if name else list(self._regions)
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                region.mapping.close()

    def read(self, ref: SharedMemoryRef, what: str) -> bytes:
        """A copy of the referenced bytes (the client may rewrite the region as soon as the request is answered)."""
        if ref.byte_size > self._max_read_bytes:
            raise ResourceExhausted(f"{what}: {ref.byte_size} bytes of shared memory exceed the "
                                    f"{self._max_read_bytes}-byte limit on a request (--max-message-bytes)")
        region = self._get(ref.region)
        return region.mapping[region.window(ref, what)]

    def write(self, ref: SharedMemoryRef, data: bytes, what: str) -> None:
        """Put `data` at the start of the referenced window; it must fit."""
        if len(data) > ref.byte_size:
            raise InvalidArgument(
                f"{what}: the output has {len(data)} bytes, its shared memory window only {ref.byte_size}"
            )
        region = self._get(ref.region)
        window = region.window(ref, what)
        region.mapping[window.start : window.start + len(data)] = data

    def close(self) -> None:
        self.unregister()

    def _get(self, name: str) -> _Region:
        try:
            return self._regions[name]
        except KeyError:
            raise NotFound(f"no shared memory region '{name}' is registered") from None


def _map(path: Path, key: str, needed: int) -> mmap.mmap:
    """Map the regular file at `path` (no symlinks followed) read-write, checking it holds `needed` bytes."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise InvalidArgument(f"shared memory key '{key}' cannot be opened; create it first (shm_open)") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"shared memory key '{key}' is not a shared memory object")
        if info.st_size < needed:
            raise InvalidArgument(f"shared memory key '{key}' holds {info.st_size} bytes, the region needs {needed}")
        return mmap.mmap(descriptor, info.st_size)
    finally:
        os.close(descriptor)
