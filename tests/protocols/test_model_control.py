"""Model control gates: the bearer token and containment inside the repository (traversal, symlinks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import InvalidArgument, NotFound, Unauthenticated
from serving.model_control import ModelControl

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def control(tmp_path: Path) -> ModelControl:
    repository = tmp_path / "repo"
    (repository / "good" / "1").mkdir(parents=True)
    (repository / "good" / "config.pbtxt").write_text('name: "good"\n')
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (outside / "config.pbtxt").write_text('name: "outside"\n')
    (repository / "linked").symlink_to(outside, target_is_directory=True)
    (repository / "sneaky" / "1").mkdir(parents=True)
    (repository / "sneaky" / "config.pbtxt").symlink_to(outside / "config.pbtxt")
    return ModelControl.create("explicit", TOKEN, repository)


def test_token_is_required_and_compared(control: ModelControl) -> None:
    control.authorise([("authorization", f"Bearer {TOKEN}")])
    control.authorise([("Authorization", f"Bearer {TOKEN}".encode())])
    refused = ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)], [("x-token", f"Bearer {TOKEN}")])
    for metadata in refused:
        with pytest.raises(Unauthenticated, match="authorization: Bearer"):
            control.authorise(metadata)


def test_disabled_mode_refuses_everyone(tmp_path: Path) -> None:
    control = ModelControl.create("none", "", tmp_path)
    with pytest.raises(Unauthenticated, match="model control is disabled"):
        control.authorise([("authorization", f"Bearer {TOKEN}")])


def test_start_up_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a bearer token"):
        ModelControl.create("explicit", "short", tmp_path)
    with pytest.raises(ValueError, match="must be one of none, explicit"):
        ModelControl.create("poll", TOKEN, tmp_path)


def test_plain_model_folder_is_found(control: ModelControl) -> None:
    assert control.model_folder("good") == control.repository / "good"


@pytest.mark.parametrize("name", ["../outside", "..", ".", "good/1", "/etc", "", "a\\b", "x" * 200, ".hidden"])
def test_names_that_are_not_plain_folders_are_refused(control: ModelControl, name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a plain folder name"):
        control.model_folder(name)


@pytest.mark.parametrize("name", ["linked", "sneaky"])
def test_symlinks_out_of_the_repository_are_refused(control: ModelControl, name: str) -> None:
    with pytest.raises(InvalidArgument, match="outside the model repository"):
        control.model_folder(name)


def test_unknown_model_is_not_found(control: ModelControl) -> None:
    with pytest.raises(NotFound, match="no model folder 'missing'"):
        control.model_folder("missing")
