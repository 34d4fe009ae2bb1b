"""Run `python -m serving` as a child process on free loopback ports, wait until it is ready,
and stop it with SIGTERM (the server drains and exits 0). The demo, the benchmarks and every test
that needs a real server use this one launcher."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.channel import TlsFiles, open_channel
from clients.errors import ClientError

READY_TIMEOUT_S = 300.0
"""Loading and warming every model of a repository takes seconds on CPU; this is a generous cap."""
STOP_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 20
HEALTH_POLL_S = 0.1


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
    """A running `python -m serving --model-repository DIR` on 127.0.0.1 (gRPC `target`, OIP HTTP
    `http_target` as host:port, `metrics_url`).

    Use as a context manager (`with ServerProcess.start(repo, log=path) as server:`); leaving it
    stops the server. `stop()` returns the exit status and raises if the server ignored SIGTERM.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], target: str, metrics_url: str, log_path: Path, http_target: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        self.process = process
        self.target = target
        self.http_target = http_target
        self.metrics_url = metrics_url
        self.log_path = log_path
        self.tls = tls

    @classmethod
    def start(
        cls,
        repository: Path,
        *,
        log: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        wait_serving: bool = True,
        tls: TlsFiles | None = None,
    ) -> ServerProcess:
        """Start the server with its output in `log` (None: a new temporary file, kept for reading).

        Returns once grpc.health reports SERVING for the whole server, or, with wait_serving=False, as
        soon as it answers at all (models may still be loading). `env` adds to this process's environment.
        `tls`: how this launcher's own health checks connect to a server started with --tls-* flags.
        """
        port, http_port, metrics_port = free_ports(3)
        if log is None:
            descriptor, name = tempfile.mkstemp(prefix="ninefold-server-", suffix=".log")
            os.close(descriptor)
            log = Path(name)
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
            "--http-port",
            str(http_port),
            *extra_args,
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
        server = cls(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log,
                     f"127.0.0.1:{http_port}", tls)
        try:
            server._wait_until_up(ready_timeout, wait_serving)
        except BaseException:
            server.kill()
            raise
        return server

    def health(self, service: str = "") -> int:
        """grpc.health.v1 status of `service` right now (health_pb2.HealthCheckResponse.SERVING, ...)."""
        with open_channel(self.target, self.tls) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)

    def metrics(self) -> str:
        """The Prometheus /metrics text right now."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT_S, signum: signal.Signals = signal.SIGTERM) -> int:
        """Send `signum` (SIGTERM: drain), wait; returns the exit status (0 = clean, -9 after SIGKILL)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerProcessError(
                f"the server ignored {signum.name} for {timeout:g} s and was killed{self._tail()}"
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

    def _wait_until_up(self, timeout: float, wait_serving: bool) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerProcessError(f"the server exited with status {self.process.returncode}{self._tail()}")
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                status = self.health()
                if status == health_pb2.HealthCheckResponse.SERVING or not wait_serving:
                    return
            time.sleep(HEALTH_POLL_S)
        state = "ready" if wait_serving else "listening"
        raise ServerProcessError(f"the server was not {state} within {timeout:g} s{self._tail()}")

    def _tail(self) -> str:
        lines = self.log().splitlines()[-LOG_TAIL_LINES:]
        path = self.log_path
        return f"; last lines of {path}: " + " | ".join(lines) if lines else f" (log {path} is empty)"
