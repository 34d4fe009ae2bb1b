"""scripts/ninefold_health.py (the image's HEALTHCHECK) against a real server on loopback, and the
readiness contract the probes rely on: health service "" is SERVING only when every model is ready
(--strict-readiness, the default), or when some is (--no-strict-readiness)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.server_process import ServerProcess, free_ports
from serving.server import LIVENESS_SERVICE
from tests.deploy.deploy_support import ROOT
from tests.serving.conftest import start_server
from tests.serving.tiny_repository import write_tiny_repository

PROBE = ROOT / "scripts" / "ninefold_health.py"


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_serving_server_is_healthy(ninefold_server: ServerProcess) -> None:
    result = probe("--address", ninefold_server.target)
    assert (result.returncode, result.stderr) == (0, "")


def test_per_task_service_is_healthy(ninefold_server: ServerProcess) -> None:
    assert probe("--address", ninefold_server.target, "--service", "ninefold.v1.Vision/classify").returncode == 0


def test_default_address_follows_ninefold_port(ninefold_server: ServerProcess) -> None:
    port = ninefold_server.target.rsplit(":", 1)[1]
    assert probe(env={"NINEFOLD_PORT": port, "PATH": ""}).returncode == 0


def test_unknown_service_is_unhealthy_with_a_reason(ninefold_server: ServerProcess) -> None:
    result = probe("--address", ninefold_server.target, "--service", "no.such/Service")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "no.such/Service" in result.stderr


def test_nothing_listening_is_unhealthy() -> None:
    result = probe("--address", f"127.0.0.1:{free_ports(1)[0]}", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: ")


@pytest.fixture(scope="module")
def repository_with_a_broken_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny repository (one model per task) plus a classifier whose model file is corrupt."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("broken-repository"))
    broken = repository / "tiny_broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (broken / "config.pbtxt").write_text(
        'name: "tiny_broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'parameters { key: "task" value { string_value: "classify" } }\n')
    return repository


@pytest.fixture
def loaded_strict_server(repository_with_a_broken_model: Path) -> Iterator[ServerProcess]:
    """A server with the default readiness, once its initial load has finished (bounded wait)."""
    server = start_server(repository_with_a_broken_model, wait_serving=False)
    try:
        deadline = time.monotonic() + 120
        while "model version(s) ready in" not in server.log():
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.1)
        yield server
    finally:
        assert server.stop() == 0, server.log()


def test_one_broken_model_keeps_a_strict_server_unready(loaded_strict_server: ServerProcess) -> None:
    """9 of 10 ready is not ready: the pod gets no traffic and a rollout of the broken repository stops."""
    result = probe("--address", loaded_strict_server.target)
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr, result.stderr
    # A task whose default model is ready still says so, for a client that asks about it alone.
    assert probe("--address", loaded_strict_server.target, "--service", "ninefold.v1.Vision/classify").returncode == 0
    assert "not ready: tiny_broken:1" in loaded_strict_server.log()
    # Alive all the same: the kubelet's liveness probe must not restart it (that mends no model file).
    assert probe("--address", loaded_strict_server.target, "--service", LIVENESS_SERVICE).returncode == 0


def test_without_strict_readiness_the_ready_models_serve(repository_with_a_broken_model: Path) -> None:
    server = start_server(repository_with_a_broken_model, "--no-strict-readiness")  # waits until SERVING
    try:
        assert probe("--address", server.target).returncode == 0
    finally:
        assert server.stop() == 0, server.log()
