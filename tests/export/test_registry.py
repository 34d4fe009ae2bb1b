"""The family registry: every family module registers its family under the module's name, in export order."""

from __future__ import annotations

import pytest

from export.families import family_modules, family_names, get_family
from export.families.base import ExportError


def test_every_family_module_registers_its_family_under_its_name_in_export_order() -> None:
    names = tuple(module.__name__.rpartition(".")[2] for module in family_modules())
    assert family_names() == names
    assert names[:2] == ("alexnet", "zfnet") and all(get_family(name).name == name for name in names)


def test_an_unknown_family_is_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ExportError, match="unknown family 'alexnett'; known families: alexnet, zfnet"):
        get_family("alexnett")
