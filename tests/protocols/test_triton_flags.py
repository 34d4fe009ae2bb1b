"""Triton's flag spellings (`--grpc-port` beside `--port`, `--http-port`) and `ninefold serve --help` in groups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients.server_process import ServerProcess, ServerProcessError
from serving.config import load_config


def test_grpc_port_is_another_spelling_of_port_and_http_port_defaults_to_tritons() -> None:
    base = ["--model-repository", "repo"]
    assert load_config([*base, "--grpc-port", "7001"], env={}).port == 7001
    assert load_config([*base, "--port", "7002"], env={}).port == 7002
    config = load_config(base, env={})
    assert (config.http_port, config.port, config.metrics_port) == (8000, 8001, 8002)
    assert load_config([*base, "--http-port", "0"], env={}).http_port == 0
    assert load_config(base, env={"NINEFOLD_HTTP_PORT": "9000"}).http_port == 9000


def test_help_is_grouped_like_tritons() -> None:
    done = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    titles = [line.rstrip(":") for line in done.stdout.splitlines() if line and not line[0].isspace()]
    assert {"Server", "Model repository", "Model control", "HTTP", "GRPC", "Metrics", "Logging"} <= set(titles)
    assert "--port PORT, --grpc-port PORT" in done.stdout and "--http-port HTTP_PORT" in done.stdout


def test_a_taken_http_port_is_a_clear_error(v2_server: ServerProcess, v2_repository: Path) -> None:
    port = v2_server.http_target.rsplit(":", 1)[1]
    with pytest.raises(ServerProcessError, match=f"cannot listen on 127.0.0.1:{port} for HTTP"):
        ServerProcess.start(v2_repository, extra_args=["--http-port", port], ready_timeout=60).stop()
