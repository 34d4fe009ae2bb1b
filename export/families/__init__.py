"""Registry of model families: ``register_family`` at import of each family module, ``get_family`` by name.

The family modules register themselves when imported (under their module's name); ``family_modules()``
imports every one of them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from export.families.base import ExportError, Family

_REGISTRY: dict[str, Family[Any]] = {}


def register_family(family: Family[Any]) -> Family[Any]:
    """Add a family under its name; a second family with the same name is a programming error."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def family_modules() -> tuple[ModuleType, ...]:
    """Every family module, in export order (the order of `--families all`); importing one registers it.

    Imported here, not at the top: each family module imports ``register_family`` from this package. A new
    family is its name in both lines (ruff flags one left out of the tuple as an unused import).
    """
    from export.families import alexnet, align, captioner, dcgan, faster_rcnn, googlenet, resnet, stn, vgg, zfnet

    return (alexnet, zfnet, vgg, googlenet, resnet, faster_rcnn, dcgan, captioner, stn, align)


def family_names() -> tuple[str, ...]:
    """Registered family names, in family_modules() order (then any others, sorted)."""
    order = [module.__name__.rpartition(".")[2] for module in family_modules()]
    known = [name for name in order if name in _REGISTRY]
    return tuple(known + sorted(set(_REGISTRY) - set(known)))


def get_family(name: str) -> Family[Any]:
    """The family registered under ``name``; an unknown name raises ExportError listing the known ones."""
    family_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ExportError(f"unknown family {name!r}; known families: {', '.join(family_names())}") from None
