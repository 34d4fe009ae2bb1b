"""The shared memory registry on its own: reads bounded like a message, windows inside the region."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.api.shm import SharedMemoryRef, SharedMemoryRegistry
from serving.errors import InvalidArgument, NotFound, ResourceExhausted

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")


@pytest.fixture
def key() -> Iterator[str]:
    path = Path("/dev/shm") / f"ninefold_test_{uuid.uuid4().hex[:12]}"
    path.write_bytes(bytes(range(64)))
    yield f"/{path.name}"
    path.unlink()


def test_reads_and_writes_stay_inside_the_window_and_the_read_limit(key: str) -> None:
    registry = SharedMemoryRegistry(max_read_bytes=16)
    registry.register("r", key, offset=8, byte_size=32)
    assert registry.read(SharedMemoryRef("r", 4, 4), "input 'x'") == bytes([12, 13, 14, 15])
    with pytest.raises(ResourceExhausted, match="17 bytes of shared memory exceed the 16-byte limit"):
        registry.read(SharedMemoryRef("r", 0, 17), "input 'x'")
    with pytest.raises(InvalidArgument, match="8 bytes at offset 28 do not fit shared memory region 'r' of 32"):
        registry.read(SharedMemoryRef("r", 28, 8), "input 'x'")
    with pytest.raises(InvalidArgument, match="at offset -1"):
        registry.read(SharedMemoryRef("r", -1, 4), "input 'x'")
    registry.write(SharedMemoryRef("r", 30, 2), b"\xff\xfe", "output 'y'")
    assert (Path("/dev/shm") / key.lstrip("/")).read_bytes()[38:40] == b"\xff\xfe"
    with pytest.raises(InvalidArgument, match="the output has 3 bytes, its shared memory window only 2"):
        registry.write(SharedMemoryRef("r", 30, 2), b"abc", "output 'y'")
    registry.unregister("r")
    with pytest.raises(NotFound, match="no shared memory region 'r'"):
        registry.read(SharedMemoryRef("r", 0, 4), "input 'x'")


def test_registration_checks_sizes_names_and_count(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = SharedMemoryRegistry(max_read_bytes=1024)
    with pytest.raises(InvalidArgument, match="byte_size >= 1"):
        registry.register("r", key, offset=0, byte_size=0)
    with pytest.raises(InvalidArgument, match="holds 64 bytes, the region needs 65"):
        registry.register("r", key, offset=1, byte_size=64)
    monkeypatch.setattr("serving.api.shm.MAX_REGIONS", 2)
    registry.register("a", key, 0, 8)
    registry.register("b", key, 0, 8)
    with pytest.raises(ResourceExhausted, match="2 shared memory regions are registered"):
        registry.register("c", key, 0, 8)
    registry.close()
    assert registry.status() == []
