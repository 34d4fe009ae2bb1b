"""The server's version string, installed or run from a source tree (issue 12: no crash at import)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
import tomllib

from serving.api import inference


def test_a_source_tree_without_an_installed_package_reads_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(inference, "package_version", not_installed)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert inference.server_version() == pyproject["project"]["version"]
