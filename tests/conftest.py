"""Session-wide fixtures shared by every test area.

``small_repository``: a model repository with every registered family's small config trained and exported
once per test run. On a developer machine it is cached under .cache/small_repository/<key>, the key being a
hash of the export/ and contract/ sources (contract.sources), so an unchanged export stage is not retrained;
with CI set it is built fresh in a temporary folder. A file lock makes concurrent pytest runs share one build.

``NINEFOLD_TEST_FAMILIES=stn,align`` (development only, never in CI) builds just those families, under
their own cache key: the quick loop for someone changing one family, who runs that family's tests.

The build runs after collection (``pytest_collection_finish``), only when a collected test uses the
fixture, so that it is not charged to the first test's timeout (minutes on a busy 2-core machine).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from contract.sources import export_sources_digest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "small_repository"
COMPLETE_MARKER = ".complete"
FIXTURE = "small_repository"
FAMILIES_VARIABLE = "NINEFOLD_TEST_FAMILIES"

_prepared: dict[str, Path] = {}


def chosen_families() -> list[str] | None:
    """The families named in NINEFOLD_TEST_FAMILIES, or None (all) when it is unset or CI is set."""
    names = os.environ.get(FAMILIES_VARIABLE, "")
    if os.environ.get("CI") or not names.strip():
        return None
    return sorted(name.strip() for name in names.split(",") if name.strip())


def export_sources_key() -> str:
    """A short key over the sources a repository depends on (export/, contract/), and the chosen families."""
    families = chosen_families()
    return export_sources_digest()[:16] + ("" if families is None else "-" + "-".join(families))


def _build(out: Path) -> None:
    # Imported here so that test areas which never use the fixture never import torch.
    from export.pipeline import build_repository

    # A family below its bar is written stamped, so that test_family_meets_its_quality_threshold names it
    # instead of every test of the repository erroring on the export.
    build_repository(out, families=chosen_families(), config="small", seed=0, allow_below_threshold=True)


def _prepare() -> Path:
    """Build (or reuse from the cache) the repository of all registered small families."""
    if os.environ.get("CI"):
        out = Path(tempfile.mkdtemp(prefix="ninefold-small-repository-"))
        _build(out)
        return out
    out = CACHE / export_sources_key()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run builds; this one waits and reuses
        if not (out / COMPLETE_MARKER).exists():
            shutil.rmtree(out, ignore_errors=True)
            _build(out)
            if export_sources_key() == out.name:  # sources edited during the build: use it, don't keep it
                (out / COMPLETE_MARKER).touch()
    return out


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _prepared[FIXTURE] = _prepare()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get("CI") and FIXTURE in _prepared:
        shutil.rmtree(_prepared[FIXTURE], ignore_errors=True)


@pytest.fixture(scope="session")
def small_repository() -> Path:
    """Path of a repository with all registered small families (see the module docstring)."""
    if FIXTURE not in _prepared:  # requested dynamically, not seen at collection
        _prepared[FIXTURE] = _prepare()
    return _prepared[FIXTURE]
