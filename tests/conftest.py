"""Session-wide fixtures shared by every test area.

``small_repository``: a model repository with every registered family's small config trained and exported
once per test run. On a developer machine it is cached under .cache/small_repository/<key>, the key being a
hash of the export/ and contract/ sources (contract.sources), so an unchanged export stage is not retrained;
with CI set it is built fresh in a temporary folder. A file lock makes concurrent pytest runs share one build.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist loadfile``): one builds (itself with
two export processes) while the other waits on the lock, then both test. With CI set, the controller names
one fresh folder for the run (``pytest_configure_node``) and removes it at the end, so the workers share
one build there instead of building one each.

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
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.sources import export_sources_digest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "small_repository"
COMPLETE_MARKER = ".complete"
FIXTURE = "small_repository"
FAMILIES_VARIABLE = "NINEFOLD_TEST_FAMILIES"

SHARED_BUILD_KEY = "ninefold_small_repository"

_prepared: dict[str, Path] = {}
_shared_build: list[Path] = []  # the CI run's folder, named by the xdist controller


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


def _build_once(out: Path, keep: Callable[[], bool] = lambda: True) -> None:
    """Build into `out` unless a complete build is there; concurrent callers wait on its lock and reuse it.

    keep: asked after the build whether to mark it complete, i.e. reusable by later callers.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / COMPLETE_MARKER).exists():
            shutil.rmtree(out, ignore_errors=True)
            _build(out)
            if keep():
                (out / COMPLETE_MARKER).touch()


def _prepare(config: pytest.Config) -> Path:
    """Build (or reuse from the cache, or from another xdist worker of this CI run) the small repository."""
    if os.environ.get("CI"):
        shared = getattr(config, "workerinput", {}).get(SHARED_BUILD_KEY)
        if shared is None:
            out = Path(tempfile.mkdtemp(prefix="ninefold-small-repository-"))
            _build(out)
            return out
        _build_once(Path(shared))
        return Path(shared)
    out = CACHE / export_sources_key()
    _build_once(out, keep=lambda: export_sources_key() == out.name)  # sources edited during the build: don't keep
    return out


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """xdist controller, CI: one fresh folder for this run's build, handed to every worker."""
    if os.environ.get("CI"):
        if not _shared_build:
            _shared_build.append(Path(tempfile.mkdtemp(prefix="ninefold-small-repository-")) / "repository")
        node.workerinput[SHARED_BUILD_KEY] = str(_shared_build[0])  # type: ignore[attr-defined]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _prepared[FIXTURE] = _prepare(session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _shared_build:  # the xdist controller, after every worker has finished
        shutil.rmtree(_shared_build[0].parent, ignore_errors=True)
    elif os.environ.get("CI") and FIXTURE in _prepared and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_prepared[FIXTURE], ignore_errors=True)


@pytest.fixture(scope="session")
def small_repository(pytestconfig: pytest.Config) -> Path:
    """Path of a repository with all registered small families (see the module docstring)."""
    if FIXTURE not in _prepared:  # requested dynamically, not seen at collection
        _prepared[FIXTURE] = _prepare(pytestconfig)
    return _prepared[FIXTURE]
