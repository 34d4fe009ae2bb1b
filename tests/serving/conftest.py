"""Start the real server as a subprocess on free loopback ports (reused by every serving-side test area).

    server = start_server(repository, "--grace-seconds", "5")   # waits until health "" is SERVING
    channel = grpc.insecure_channel(server.address)
    text = server.metrics()
    assert server.stop() == 0                                   # SIGTERM, wait, exit code

or the `server_factory` fixture, which stops whatever it started at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A `python -m serving` child process and how to reach it."""

    process: subprocess.Popen
    address: str  # "127.0.0.1:<port>" for grpc.insecure_channel
    metrics_url: str  # "http://127.0.0.1:<port>/metrics"
    log_path: Path

    def metrics(self) -> str:
        """The /metrics text right now."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = "") -> int:
        """grpc.health.v1 status of `service` (health_pb2.HealthCheckResponse.SERVING, ...)."""
        with grpc.insecure_channel(self.address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `signum`, wait for the process to exit, return its exit code (kills it after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    repository: Path, *extra_args: str, env: dict[str, str] | None = None, wait_serving: bool = True
) -> RunningServer:
    """Start `python -m serving` on free ports and wait until health "" is SERVING (or just listening).

    Raises RuntimeError with the server's log when it exits or does not get there in time.
    """
    port, metrics_port = free_port(), free_port()
    descriptor, log_name = tempfile.mkstemp(prefix="ninefold-server-", suffix=".log")
    command = [
        sys.executable, "-m", "serving",
        "--model-repository", str(repository),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", str(metrics_port),
        *extra_args,
    ]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with os.fdopen(descriptor, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", Path(log_name))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            status = server.health()
        except grpc.RpcError:
            status = None
        if status is not None and (not wait_serving or status == health_pb2.HealthCheckResponse.SERVING):
            return server
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    state = "SERVING" if wait_serving else "listening"
    raise RuntimeError(f"server not {state} in {STARTUP_TIMEOUT_S} s:\n{server.log()}")


@pytest.fixture
def server_factory() -> Iterator[type[start_server]]:  # type: ignore[valid-type]
    """`server_factory(repository, *args)` starts a server; all of them are stopped at teardown."""
    started: list[RunningServer] = []

    def factory(repository: Path, *extra_args: str, **kwargs: object) -> RunningServer:
        server = start_server(repository, *extra_args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory  # type: ignore[misc]
    for server in started:
        server.stop()
