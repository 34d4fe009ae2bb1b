"""The CLI without a server: argument errors, unreachable servers and unreadable files are one
line on stderr with a non-zero exit; the client side never imports torch or the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients import version
from clients.cli import build_parser, main


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_unreachable_server_is_one_line_saying_what_to_do(
    refusing_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"not decoded by the client")
    assert main(["classify", str(image), str(image), "--server", refusing_address]) == 1
    line = one_error_line(capsys)  # stops at the first image: the second would fail the same way
    assert line.startswith(f"ninefold: error: no ninefold server answers at --server {refusing_address} (UNAVAILABLE")
    assert "start one with `ninefold serve --model-repository DIR`, or pass --server HOST:PORT" in line


def test_silent_server_is_one_line_saying_what_to_do(
    silent_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--server", silent_address, "--timeout", "0.5"]) == 1
    line = one_error_line(capsys)
    assert f"no ninefold server answers at --server {silent_address} (DEADLINE_EXCEEDED" in line
    assert "ninefold serve" in line


def test_unresolvable_server_name_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"bytes")
    assert main(["caption", str(image), "--server", "no-such-host.invalid:8001", "--timeout", "5"]) == 1
    assert one_error_line(capsys).startswith("ninefold: error: ")


def test_missing_image_file_is_one_line(refusing_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "does/not/exist.png", "--server", refusing_address]) == 1
    line = one_error_line(capsys)
    assert "does/not/exist.png" in line and "No such file" in line


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["classify"],
        ["classify", "a.png", "--top-k", "-1"],
        ["detect", "a.png", "--threshold", "2"],
        ["generate", "--count", "2"],  # --out is required
        ["warp", "a.png", "--timeout", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert one_error_line(capsys).startswith("ninefold")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ninefold {version.ninefold_version()}"


def test_version_from_a_source_tree_without_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "PACKAGE", "ninefold-not-installed-here")
    number, _, note = version.ninefold_version().partition(" ")
    assert note == "(source tree, not installed)"
    assert f'\nversion = "{number}"\n' in (Path(version.__file__).parents[1] / "pyproject.toml").read_text()
    monkeypatch.setattr(version, "PYPROJECT", Path("/nonexistent/pyproject.toml"))
    assert version.ninefold_version() == "unknown (not installed)"


def test_server_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["models"]).server == "localhost:8001"
    monkeypatch.setenv("NINEFOLD_SERVER", "dns:///ninefold.serving.svc.cluster.local:8001")
    args = build_parser().parse_args(["classify", "a.png"])
    assert args.server == "dns:///ninefold.serving.svc.cluster.local:8001"
    assert build_parser().parse_args(["classify", "a.png", "--server", "h:1"]).server == "h:1"


def test_client_side_imports_neither_torch_nor_the_server() -> None:
    code = (
        "import sys, clients, clients.cli, clients.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'serving', 'export',"
        " 'onnxruntime'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_serve_is_dispatched_to_the_server_with_its_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "--model-repository" in help_text
    assert "(default: )" not in help_text and "(default: none) [env NINEFOLD_LOAD_MODEL]" in " ".join(help_text.split())
