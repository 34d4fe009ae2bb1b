"""``ninefold export`` bad input: one clear line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.__main__ import EXIT_BAD_INPUT, main, parse_seeds, seed_table
from export.families import get_family
from export.families.base import Quality
from export.pipeline import SeedRun

ROOT = Path(__file__).resolve().parents[2]


def _small_weights(family: str, path: Path) -> Path:
    model = get_family(family)
    torch.save(model.build(model.configs["small"]).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--families", "nope"], "unknown family 'nope'; known families: alexnet"),
        (["--families", "resnet", "--config", "huge"], "resnet has no 'huge' config"),
        (["--families", "resnet", "--config", "full"], "pass --weights resnet=PATH"),
        (["--families", "resnet", "--config", "full", "--weights", "resnet=/no/such.pt"], "not found: /no/such.pt"),
        (["--families", "resnet", "--weights", "resnet"], "--weights expects FAMILY=PATH"),
        (["--families", "resnet", "--weights", "vgg=/x.pt"], "vgg, which is not among the families exported"),
        (["--families", "resnet", "--tensorrt"], "cannot build TensorRT engines"),
        (["--families", ","], "no families given"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    if "--tensorrt" in arguments and __import__("export.tensorrt").tensorrt.unavailable_reason() is None:
        pytest.skip("this machine can build TensorRT engines")
    assert main([*arguments, "--out", str(out)]) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ninefold export: ") and message in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["--families", "resnet", "--out", str(tmp_path / "file" / "repo")]) == EXIT_BAD_INPUT
    assert "cannot create output directory" in capsys.readouterr().err


def test_weights_of_another_family_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _small_weights("vgg", tmp_path / "vgg.pt")
    out = tmp_path / "repo"
    assert main(["--families", "resnet", "--weights", f"resnet={weights}", "--out", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit resnet (small)" in err[0]
    assert not out.exists()  # the failed export removed the folder it had made


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("whole_model", "it is a pickled torch.nn.modules.linear.Linear object, not a state_dict; where the model"),
        ("junk", "not a PyTorch checkpoint of tensors (UnpicklingError: Unsupported operand"),
    ],
)
def test_a_checkpoint_that_is_no_state_dict_says_what_it_is(
    checkpoint: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{checkpoint}.pt"
    if checkpoint == "whole_model":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "repo"
    assert main(["--families", "resnet", "--weights", f"resnet={path}", "--out", str(out)]) == EXIT_BAD_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line and "weights_only" not in line
    assert not out.exists()


def test_the_real_process_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "export", "--families", "nope", "--out", str(tmp_path / "repo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == EXIT_BAD_INPUT
    assert (
        completed.stderr.strip().splitlines() == [completed.stderr.strip().splitlines()[0]]
        and "unknown family 'nope'" in completed.stderr
    )


@pytest.mark.parametrize(("text", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("3", [3]), ("1,5", [1, 5])])
def test_seeds_are_a_range_or_a_list(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a-b", "-3", "4-2", "1,,2"])
def test_malformed_seeds_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected A-B or A,B"):
        parse_seeds(text)


def test_the_seed_table_shows_every_seed_the_worst_and_marks_a_miss() -> None:
    runs = [
        SeedRun("zfnet", seed, Quality("top1", value, 0.95), cpu_seconds=20.0 + seed)
        for seed, value in ((0, 0.981), (1, 0.926), (2, 0.99))
    ]
    header, rule, row = seed_table(runs).splitlines()
    assert header.split() == ["family", "metric", "seed", "0", "seed", "1", "seed", "2", "worst", "bar", "cpu", "s"]
    assert set(rule) == {"-", " "}
    assert row.split() == ["zfnet", "top1", "0.981", "0.926", "!", "0.990", "0.926", "0.95", "21"]
