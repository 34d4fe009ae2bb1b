"""Real ninefold servers for the client tests: child processes on free loopback ports.

`tiny_server` serves tests/serving/tiny_repository.py (real ONNX graphs built in milliseconds,
answers checkable by hand) once per test session; the demo test uses the trained small families.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.server_process import ServerProcess
from tests.serving.tiny_repository import write_tiny_repository


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_repository(tmp_path_factory.mktemp("tiny_repository"))


@pytest.fixture(scope="session")
def tiny_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tiny_server") / "server.log"
    with ServerProcess.start(tiny_repository, log=log, extra_args=["--ort-threads", "1"]) as server:
        yield server


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """A loopback port that is bound but not listening: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_address() -> Iterator[str]:
    """A loopback port that accepts TCP connections but never speaks: a hung server. Calls to it can
    only end by their deadline, so DEADLINE_EXCEEDED is certain (not a race against a fast answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
