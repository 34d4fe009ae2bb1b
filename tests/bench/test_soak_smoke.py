"""`make soak` end to end at a few seconds per phase on the tiny repository: every phase, figure and check is
written. Whether the checks pass is `make soak`'s business on a quiet machine, not this test's."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import soak
from tests.serving.tiny_repository import write_tiny_repository


def test_soak_writes_every_phase_figure_and_check(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path / "repository")
    out = tmp_path / "soak"
    status = soak.main(["--model-repository", str(repository), "--out", str(out), "--concurrency", "4",
                        "--warmup-seconds", "0.5", "--saturation-seconds", "1", "--steady-seconds", "1",
                        "--overload-seconds", "1"])
    report = json.loads((out / "soak.json").read_text())
    assert status == (0 if all(report["checks"].values()) else 1)
    assert [phase["name"] for phase in report["phases"]] == ["saturation", "steady", "overload"]
    saturation = report["phases"][0]
    assert saturation["served"] > 0 and saturation["bad_inputs"].get("INVALID_ARGUMENT", 0) > 0
    assert {"caption", "classify", "detect", "generate", "warp", soak.BAD_INPUT} <= set(report["mix"])
    assert report["rss_start_mb"] > 0 and report["rss_end_mb"] > 0
    assert "| overload |" in (out / "soak.md").read_text()


def test_soak_refuses_phases_longer_than_ten_minutes(tmp_path: Path) -> None:
    assert soak.main(["--model-repository", str(tmp_path), "--steady-seconds", "600"]) == 2
