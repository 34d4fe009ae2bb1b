"""The `ninefold` CLI against a real server: exact --json shapes, files written, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.cli import main
from clients.server_process import ServerProcess
from tests.serving.tiny_repository import WARP_THETA


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("cli_images")
    paths = []
    for i, rgb in enumerate([(220, 30, 30), (30, 30, 220)]):
        path = folder / f"scene{i}.png"
        Image.fromarray(np.full((16, 16, 3), rgb, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run_json(capsys: pytest.CaptureFixture[str], server: ServerProcess, *argv: str) -> list[dict]:
    assert main([*argv, "--server", server.target, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return [json.loads(line) for line in captured.out.splitlines()]


def test_classify_json_one_object_per_image(capsys, tiny_server: ServerProcess, images: list[str]) -> None:
    objects = run_json(capsys, tiny_server, "classify", *images, "--top-k", "2")
    assert len(objects) == 2
    for obj in objects:
        assert set(obj) == {"model", "predictions"} and obj["model"] == "tiny_classify"
        assert len(obj["predictions"]) == 2
        assert all(set(p) == {"label", "score"} for p in obj["predictions"])


def test_classify_ten_crops_averages_and_a_bad_count_is_named(capsys, tiny_server: ServerProcess, images) -> None:
    """tiny_classify's logits depend on the mean colour only, so every crop of a flat image agrees with one crop."""
    (single,) = run_json(capsys, tiny_server, "classify", images[0], "--top-k", "3")
    (ten,) = run_json(capsys, tiny_server, "classify", images[0], "--top-k", "3", "--crops", "10")
    assert [p["label"] for p in ten["predictions"]] == [p["label"] for p in single["predictions"]]
    assert np.allclose([p["score"] for p in ten["predictions"]], [p["score"] for p in single["predictions"]], atol=1e-5)
    assert main(["classify", images[0], "--crops", "3", "--server", tiny_server.target]) != 0
    assert "crops 3 is not one of 1, 5 or 10" in capsys.readouterr().err


def test_detect_json_boxes(capsys, tiny_server: ServerProcess, images: list[str]) -> None:
    (obj,) = run_json(capsys, tiny_server, "detect", images[0], "--threshold", "0.3")
    assert set(obj) == {"model", "detections"}
    assert [set(d) for d in obj["detections"]] == [{"label", "score", "box"}] * 2  # 0.9 and 0.4 rows
    assert obj["detections"][0] == {"label": "square", "score": 0.9, "box": [2.0, 4.0, 6.0, 8.0]}


def test_caption_json(capsys, tiny_server: ServerProcess, images: list[str]) -> None:
    (obj,) = run_json(capsys, tiny_server, "caption", images[1], "--beam-size", "2")
    assert set(obj) == {"model", "caption"} and obj["model"] == "tiny_caption"
    assert isinstance(obj["caption"], str) and obj["caption"]


def test_warp_json_writes_the_warped_png(capsys, tiny_server: ServerProcess, images: list[str], tmp_path: Path) -> None:
    (obj,) = run_json(capsys, tiny_server, "warp", images[0], "--out", str(tmp_path))
    assert set(obj) == {"model", "transform", "theta", "image_path"} and obj["transform"] == "affine"
    assert np.allclose(obj["theta"], np.reshape(WARP_THETA, (2, 3)))
    assert Path(obj["image_path"]) == tmp_path / "scene0_warped.png"
    assert Image.open(obj["image_path"]).size == (8, 8)


def test_generate_json_writes_count_pngs(capsys, tiny_server: ServerProcess, tmp_path: Path) -> None:
    (obj,) = run_json(capsys, tiny_server, "generate", "--count", "3", "--seed", "5", "--out", str(tmp_path / "g"))
    assert set(obj) == {"model", "image_paths"} and obj["model"] == "tiny_generate"
    assert len(obj["image_paths"]) == 3
    assert all(Image.open(path).size == (4, 4) for path in obj["image_paths"])


def test_readable_lines_and_models_table(capsys, tiny_server: ServerProcess, images: list[str]) -> None:
    assert main(["classify", *images, "--server", tiny_server.target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: ") and "tiny_classify v1" in lines[0]
    assert main(["models", "--server", tiny_server.target]) == 0
    table = capsys.readouterr().out
    assert "tiny_caption_decoder" in table and "caption_decoder" in table


def test_unknown_model_is_one_line_not_found(capsys, tiny_server: ServerProcess, images: list[str]) -> None:
    assert main(["classify", images[0], "--model", "nope_small", "--server", tiny_server.target]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("ninefold: error: NOT_FOUND")
    assert "nope_small" in captured.err


def test_console_script_reports_bad_image_bytes_in_one_line(tiny_server: ServerProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a PNG")
    result = subprocess.run(
        [Path(sys.executable).with_name("ninefold"), "detect", str(garbage), "--server", tiny_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "INVALID_ARGUMENT" in result.stderr


def test_a_bad_file_among_images_is_named_and_the_others_still_answered(
    capsys, tiny_server: ServerProcess, images: list[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4 not an image")
    assert main(["classify", images[0], str(report), images[1], "--server", tiny_server.target]) == 1
    captured = capsys.readouterr()
    answered = captured.out.splitlines()
    assert [line.split(": ")[0] for line in answered] == [images[0], images[1]]
    (error,) = captured.err.splitlines()
    assert error.startswith(f"ninefold: error: {report}: INVALID_ARGUMENT")


def test_models_with_an_unknown_task_names_it_and_the_served_tasks(capsys, tiny_server: ServerProcess) -> None:
    assert main(["models", "--task", "clasify", "--server", tiny_server.target]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ninefold: error: --task 'clasify': no model serves it; this server's tasks: ")
    assert "caption, caption_decoder, classify, detect, explain, generate, warp" in captured.err
    assert main(["models", "--task", "classify", "--server", tiny_server.target, "--json"]) == 0
    assert {m["task"] for m in json.loads(capsys.readouterr().out)["models"]} == {"classify"}


def test_server_log_says_metrics_off_for_metrics_port_0(tiny_repository: Path, tmp_path: Path) -> None:
    arguments = ["--metrics-port", "0"]
    with ServerProcess.start(tiny_repository, log=tmp_path / "server.log", extra_args=arguments) as server:
        log = server.log()
    assert "metrics off: --metrics-port 0)" in log and "metrics on :0" not in log
