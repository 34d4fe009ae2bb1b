"""The demo end to end: up-to-date check, server child process, one request per task, pictures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from clients import demo
from clients.demo_repository import write_stamp
from tests.serving.tiny_repository import write_tiny_aligner

TASK_PICTURES = (
    "detect.png",
    "caption.png",
    "generate.png",
    "warp.png",
    "align.png",
    "explain_conv1.png",
    "explain_by_class.png",
)


def stamped_copy(repository: Path, destination: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """A copy of `repository` the demo takes as up to date (so it does not export)."""
    shutil.copytree(repository, destination, ignore=shutil.ignore_patterns(*leave_out))
    if not (destination / "align_small").exists():  # the tiny repository: its aligner is not in the default set
        write_tiny_aligner(destination)
    for config in destination.glob("*/config.pbtxt"):
        report = config.parent / "1" / "export_report.json"
        if not report.exists():  # hand-written test models have no export report
            report.write_text("{}")
    write_stamp(destination)
    return destination


def assert_pictures(out: Path, classifiers: list[str]) -> None:
    for name in [*TASK_PICTURES, *(f"classify_{model}.png" for model in classifiers)]:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 256, name


def test_demo_answers_every_task_and_draws_it(
    tiny_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = stamped_copy(tiny_repository, tmp_path / "repository")
    assert demo.main(["--model-repository", str(repository), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "reusing the up-to-date model repository" in printed
    assert "FAILED" not in printed and "every task answered" in printed
    assert_pictures(tmp_path / "out", ["tiny_classify"])


def test_demo_exits_non_zero_when_a_task_has_no_model(
    tiny_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = stamped_copy(tiny_repository, tmp_path / "repository", leave_out=("tiny_detect",))
    assert demo.main(["--model-repository", str(repository), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "detect:\n  FAILED: " in captured.out
    assert captured.err.strip() == "demo: FAILED: detect"
    assert (tmp_path / "out" / "warp.png").exists()  # the other tasks still ran


@pytest.mark.slow
def test_demo_on_the_trained_small_families(
    small_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = stamped_copy(small_repository, tmp_path / "repository")
    assert demo.main(["--model-repository", str(repository), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "FAILED" not in printed
    classifiers = sorted(p.stem.removeprefix("classify_") for p in (tmp_path / "out").glob("classify_*.png"))
    assert len(classifiers) == 5, classifiers
    assert_pictures(tmp_path / "out", classifiers)
    for transform in ("projective", "tps"):  # each STN variant on distortions of its own kind
        assert f"{transform} theta [" in printed
        with Image.open(tmp_path / "out" / f"warp_{transform}.png") as picture:
            assert picture.format == "PNG" and min(picture.size) >= 256
