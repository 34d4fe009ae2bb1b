"""The demo's parts that need no server: repository freshness and the pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clients import pictures
from clients.demo_repository import (
    STAMP_FILE,
    ensure_repository,
    is_up_to_date,
    main,
    write_stamp,
)
from clients.errors import ClientError
from contract.sources import export_sources_digest
from export.families import get_family


def write_model(repository: Path, name: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    (repository / name / "1" / "export_report.json").write_text("{}")


@pytest.fixture
def stamped_repository(tmp_path: Path) -> Path:
    for name in ("resnet_small", "stn_small"):
        write_model(tmp_path, name)
    write_stamp(tmp_path)
    return tmp_path


def test_stamped_complete_repository_is_up_to_date(stamped_repository: Path) -> None:
    assert is_up_to_date(stamped_repository)


def test_missing_stamp_or_missing_repository_is_stale(stamped_repository: Path, tmp_path: Path) -> None:
    (stamped_repository / STAMP_FILE).unlink()
    assert not is_up_to_date(stamped_repository)
    assert not is_up_to_date(tmp_path / "never_exported")


def test_changed_export_sources_make_it_stale(stamped_repository: Path) -> None:
    stamp = json.loads((stamped_repository / STAMP_FILE).read_text())
    stamp["export_sources"] = "0" * 64
    (stamped_repository / STAMP_FILE).write_text(json.dumps(stamp))
    assert not is_up_to_date(stamped_repository)


def test_a_listed_model_without_its_report_makes_it_stale(stamped_repository: Path) -> None:
    (stamped_repository / "stn_small" / "1" / "export_report.json").unlink()
    assert not is_up_to_date(stamped_repository)


def test_stamp_lists_only_complete_models(stamped_repository: Path) -> None:
    (stamped_repository / "half_written").mkdir()
    write_stamp(stamped_repository)
    assert json.loads((stamped_repository / STAMP_FILE).read_text())["models"] == ["resnet_small", "stn_small"]


def test_export_command_reuses_an_up_to_date_repository(
    stamped_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model-repository", str(stamped_repository)]) == 0
    assert "reusing the up-to-date model repository" in capsys.readouterr().out


def test_export_command_reports_a_failed_export_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert main(["--model-repository", str(not_a_folder), "--force"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the export failed with exit status 2: cannot create output directory")


def test_an_export_below_its_quality_bar_stops_the_demo_with_the_exports_message(tmp_path: Path) -> None:
    """Random small weights: a real export whose model misses its bar, without minutes of training."""
    resnet = get_family("resnet")
    torch.save(resnet.build(resnet.configs["small"]).state_dict(), tmp_path / "resnet.pt")
    repository = tmp_path / "repo"
    arguments = ["--families", "resnet", "--weights", f"resnet={tmp_path / 'resnet.pt'}"]
    with pytest.raises(ClientError, match=r"exit status 1: resnet \(resnet_small\) is below its quality bar: top1"):
        ensure_repository(repository, force=True, export_arguments=arguments)
    assert not (repository / STAMP_FILE).exists()


def test_digest_is_stable_and_hex() -> None:
    assert export_sources_digest() == export_sources_digest()
    assert len(export_sources_digest()) == 64


def test_pictures_enlarge_draw_caption_and_grid_without_touching_inputs() -> None:
    scene = np.zeros((32, 32, 3), np.uint8)
    scene[8:16, 8:16] = 255
    big = pictures.enlarge(scene, 128)
    assert big.size == (128, 128)
    assert big.getpixel((40, 40)) == (255, 255, 255)  # pixel (10, 10) of the scene, 4x larger
    boxed = pictures.draw_boxes(big, [(8.0, 8.0, 16.0, 16.0)], ["square 0.90"], scale=4.0)
    assert boxed.size == big.size and boxed.tobytes() != big.tobytes()
    assert big.getpixel((32, 32)) == (255, 255, 255)  # the input is unchanged
    captioned = pictures.with_caption(boxed, ["a long caption " * 6, "truth: square"], [pictures.GOOD])
    assert captioned.width == 128 and captioned.height > 128 + 3 * pictures.FONT_SIZE  # wrapped lines
    sheet = pictures.grid([captioned] * 5, columns=4, title="demo")
    assert sheet.width > 4 * 128 and sheet.height > 2 * captioned.height
