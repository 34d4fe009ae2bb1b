"""scripts/ninefold_health.py (the image's HEALTHCHECK) against a real server on loopback."""

from __future__ import annotations

import subprocess
import sys

from clients.server_process import ServerProcess, free_ports
from tests.deploy.deploy_support import ROOT

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
