"""Checkpoints in a user's layout or words: ZF Net's documented layout and its nn.Sequential converter, the
captioner's settings (vocabulary, max length, sizes) stored in the checkpoint or given on the command line.
The end-to-end export + serve of both is tests/export/test_full_exports_served.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from export.__main__ import main as export_main
from export.families import get_family
from export.families.base import CONFIG_KEY, ExportError, WeightsError, checkpoint
from export.families.zfnet import ZFNet, from_sequential
from export.pipeline import build_repository
from tests.export.livening import liven
from tests.export.test_full_exports_served import parameters
from tests.export.user_checkpoints import sequential_zfnet, trained_captioner

EXPORT_DOC = Path(__file__).resolve().parents[2] / "docs" / "EXPORT.md"


def _shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in state_dict.items()}


def _full_zfnet_shapes() -> dict[str, list[int]]:
    """The full config's state_dict shapes (built on the meta device: 60 M parameters, no memory or time)."""
    with torch.device("meta"):
        return _shapes(ZFNet(get_family("zfnet").configs["full"]).state_dict())


def test_the_documented_zfnet_layout_is_the_full_models_state_dict() -> None:
    section = EXPORT_DOC.read_text().split("### ZF Net checkpoint layout", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"\| `(\S+)` \| \[([\d, ]+)\]", section)
    assert {name: [int(n) for n in shape.split(",")] for name, shape in rows} == _full_zfnet_shapes()


def test_a_sequential_zfnet_of_the_papers_sizes_is_renamed_into_the_layout() -> None:
    config = get_family("zfnet").configs["full"]
    with torch.device("meta"):
        user = sequential_zfnet(config.conv_widths, config.fc_width, config.num_classes)
    assert _shapes(from_sequential(user.state_dict())) == _full_zfnet_shapes()


def test_a_narrower_sequential_zfnet_loads_with_its_widths_and_answers_as_itself() -> None:
    family = get_family("zfnet")
    config = family.configs["full"]
    user = liven(sequential_zfnet((8, 12, 16, 16, 12), 32, config.num_classes), calibration=None)
    with torch.device("meta"):
        placeholder = family.build(config)  # load rebuilds it with the checkpoint's widths
    loaded = family.load(placeholder, config, user.state_dict())
    assert (
        _shapes(loaded.state_dict())["conv1.weight"][0] == 8
        and _shapes(loaded.state_dict())["classifier.1.weight"][0] == 32
    )
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = user(images)
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_a_checkpoint_that_is_no_zfnet_is_refused_naming_what_it_holds() -> None:
    with pytest.raises(WeightsError, match=r"neither its own layout .* found 20 convolutions and 1 linear layers"):
        from_sequential(torchvision.models.resnet18().state_dict())


@pytest.fixture(scope="module")
def captioner_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny captioner of its own words, saved with its settings (two training steps: only shapes matter)."""
    model = trained_captioner(steps=2)
    path = tmp_path_factory.mktemp("captioner") / "captioner.pt"
    torch.save(checkpoint(model.state_dict(), model.config), path)
    return path


def _export_captioner(path: Path, out: Path, *flags: str) -> int:
    return export_main(
        ["--families", "captioner", "--config", "full", "--weights", f"captioner={path}", "--out", str(out), *flags]
    )


def test_command_line_settings_take_precedence_over_the_checkpoints(captioner_file: Path, tmp_path: Path) -> None:
    stored = torch.load(captioner_file, weights_only=True)[CONFIG_KEY]
    assert _export_captioner(captioner_file, tmp_path / "repo", "--captioner-max-length", "4") == 0
    folder = tmp_path / "repo" / "captioner_full"
    assert (folder / "vocabulary.txt").read_text().splitlines() == list(stored["vocabulary"])
    assert parameters(folder)["max_length"] == "4"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--captioner-embed-dim", "17"), r"weights do not fit captioner_full: .*shape mismatches .*decoder\.embed"),
        (("--captioner-vocabulary", "{no_start}"), "the caption vocabulary lacks <start>"),
        (("--captioner-vocabulary", "{missing}"), "cannot read --captioner-vocabulary"),
    ],
)
def test_settings_that_do_not_fit_exit_2_saying_why(
    captioner_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, str], message: str
) -> None:
    (tmp_path / "no_start.txt").write_text("<end>\nword\n")
    option, value = flags
    value = value.format(no_start=tmp_path / "no_start.txt", missing=tmp_path / "missing.txt")
    assert _export_captioner(captioner_file, tmp_path / "repo", option, value) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "repo").exists()


def test_a_setting_a_family_does_not_have_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zfnet.pt"
    torch.save({"state_dict": {}, CONFIG_KEY: {"fc_width": 10}}, path)
    with pytest.raises(ExportError, match=r"cannot set fc_width \(settable: nothing\)"):
        build_repository(tmp_path / "repo", families=["zfnet"], config="full", weights={"zfnet": path})
    with pytest.raises(ExportError, match=r"captioner settings: max_length must be int, got '9'"):
        build_repository(tmp_path / "repo", families=["captioner"], settings={"captioner": {"max_length": "9"}})
