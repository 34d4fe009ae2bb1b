"""Run `python -m serving` as a child process on free loopback ports, wait until it is ready,
and stop it with SIGTERM (the server drains and exits 0). The demo uses it; so can anything else
that needs a real server for a while."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc

from clients.client import VisionClient
from clients.errors import ClientError, VisionError

READY_TIMEOUT_S = 300.0
"""Loading and warming every model of a repository takes seconds on CPU; this is a generous cap."""
STOP_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 20


class ServerProcessError(ClientError):
    """The server did not start, did not become ready, or did not stop cleanly; the message carries
    the end of its log."""


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held together while chosen, so no repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class ServerProcess:
    """A running `python -m serving --model-repository DIR` on 127.0.0.1 (gRPC `target`, `metrics_url`).

    Use as a context manager (`with ServerProcess.start(repo, log=path) as server:`); leaving it
    stops the server. `stop()` returns the exit status and raises if the server ignored SIGTERM.
    """

    def __init__(self, process: subprocess.Popen[bytes], target: str, metrics_url: str, log: Path) -> None:
        self.process = process
        self.target = target
        self.metrics_url = metrics_url
        self.log = log

    @classmethod
    def start(
        cls,
        repository: Path,
        *,
        log: Path,
        extra_args: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> ServerProcess:
        """Start the server, output to `log`, and return once grpc.health reports SERVING."""
        port, metrics_port = free_ports(2)
        command = [
            sys.executable,
            "-m",
            "serving",
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            *extra_args,
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        server = cls(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log)
        try:
            server._wait_until_ready(ready_timeout)
        except BaseException:
            server.kill()
            raise
        return server

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the drain; returns the exit status (0 = clean)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerProcessError(
                f"the server ignored SIGTERM for {timeout:g} s and was killed{self._tail()}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with VisionClient(self.target) as client:
            while (remaining := deadline - time.monotonic()) > 0:
                if self.process.poll() is not None:
                    raise ServerProcessError(f"the server exited with status {self.process.returncode}{self._tail()}")
                try:
                    client.wait_until_ready(timeout=min(1.0, remaining))
                    return
                except VisionError as error:
                    if error.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
        raise ServerProcessError(f"the server was not ready within {timeout:g} s{self._tail()}")

    def _tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if self.log.exists() else []
        return f"; last lines of {self.log}: " + " | ".join(lines) if lines else f" (log {self.log} is empty)"
