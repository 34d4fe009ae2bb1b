"""The xdist workers of a CI run share the controller's one build of the small repository (tests/conftest.py).

Were each worker to build its own, nothing else would fail: the suite would only take one build longer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import COMPLETE_MARKER, SHARED_BUILD_KEY


def test_xdist_workers_of_a_ci_run_use_the_folder_the_controller_named(
    small_repository: Path, pytestconfig: pytest.Config
) -> None:
    shared = getattr(pytestconfig, "workerinput", {}).get(SHARED_BUILD_KEY)
    if not os.environ.get("CI") or shared is None:
        pytest.skip("checked in a CI run under xdist (`make test` with CI set)")
    assert small_repository == Path(shared)
    assert (small_repository / COMPLETE_MARKER).exists()
