"""The ninefold version, for `ninefold --version`: installed metadata, else the source tree's pyproject.toml.

A checkout run as `python -m clients.cli` without `pip install` has no package metadata; it must
still answer, not crash.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE = "ninefold"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: `[project]` comes first in pyproject.toml, so its `version = "..."` is the first at the start of a line.
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"', re.MULTILINE)


def ninefold_version() -> str:
    """`0.1.0` when installed; `0.1.0 (source tree, not installed)` from a checkout; `unknown` otherwise."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        pass
    try:
        found = _VERSION_LINE.search(PYPROJECT.read_text())
    except OSError:
        found = None
    return f"{found.group(1)} (source tree, not installed)" if found else "unknown (not installed)"
