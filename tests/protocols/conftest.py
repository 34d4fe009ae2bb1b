"""Fixtures for the Open Inference Protocol tests: a real server process and the real Triton client.

The server runs as `python -m serving` on free loopback ports (clients.server_process). The Triton
client runs in its own process too (triton_runner.py): its generated `inference.*` modules clash
with ninefold's in one process. `TritonRunner.run(plan, arrays)` sends a list of steps and returns
one result per step plus the output tensors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.server_process import ServerProcess
from tests.protocols.repositories import write_plain_triton_model
from tests.serving.tiny_repository import write_tiny_repository

RUNNER = Path(__file__).with_name("triton_runner.py")
CONTROL_TOKEN = "protocol-tests-token-0123456789"


@dataclass(frozen=True)
class RunResult:
    """What the Triton client saw: one entry per step ({"ok", "value"} or {"ok", "status", "message"})
    and the output tensors by "<step>/<output>" (stream and concurrent steps: "<step>.<request>/<output>")."""

    steps: list[dict[str, Any]]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class TritonRunner:
    """Runs plans with tritonclient.grpc against `target`, in a separate process."""

    target: str
    workdir: Path

    def run(self, plan: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray] | None = None) -> RunResult:
        plan_path, inputs_path, outputs_path = (self.workdir / n for n in ("plan.json", "inputs.npz", "out.npz"))
        plan_path.write_text(json.dumps(list(plan)))
        np.savez(inputs_path, **(arrays or {"unused": np.zeros(1)}))
        done = subprocess.run(
            [sys.executable, str(RUNNER), self.target, str(plan_path), str(inputs_path), str(outputs_path)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, f"triton_runner failed:\n{done.stderr[-3000:]}"
        with np.load(outputs_path, allow_pickle=True) as saved:
            outputs = {key: saved[key] for key in saved.files}
        return RunResult(json.loads(done.stdout), outputs)


@pytest.fixture(scope="session")
def v2_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny task model plus Triton's plain "simple" model (no ninefold parameters), once with
    its tensors listed in config.pbtxt and once without (signature from the model file)."""
    repository = tmp_path_factory.mktemp("v2_repository")
    write_tiny_repository(repository)
    write_plain_triton_model(repository)
    write_plain_triton_model(repository, "simple_unlisted", list_tensors=False)
    return repository


@pytest.fixture(scope="session")
def v2_server(v2_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with model control off (the default)."""
    log = tmp_path_factory.mktemp("v2_server") / "server.log"
    with ServerProcess.start(v2_repository, log=log) as server:
        yield server


@pytest.fixture
def triton(v2_server: ServerProcess, tmp_path: Path) -> TritonRunner:
    return TritonRunner(v2_server.target, tmp_path)


@dataclass(frozen=True)
class CurlAnswer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl(url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> CurlAnswer:
    """One HTTP request with the `curl` command line tool (POST when there is a body)."""
    command = ["curl", "--silent", "--show-error", "--max-time", "60", "--output", "-",
               "--write-out", "\n%{http_code}", url]
    for key, value in (headers or {}).items():
        command += ["--header", f"{key}: {value}"]
    if body is not None:
        command += ["--data-binary", "@-"]
    done = subprocess.run(command, input=body or b"", capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    payload, _, status = done.stdout.rpartition(b"\n")
    return CurlAnswer(int(status), payload)
