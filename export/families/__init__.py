"""Registry of model families: ``register_family`` at import of each family module, ``get_family`` by name.

The family modules register themselves when imported; ``load_families()`` imports the known ones (a
module that does not exist yet is skipped, so the pipeline works while families are still being added).
"""

from __future__ import annotations

import importlib
from typing import Any

from export.families.base import ExportError, Family

# Import order = export order and the order of `--families all`.
FAMILY_MODULES = (
    "alexnet",
    "zfnet",
    "vgg",
    "googlenet",
    "resnet",
    "faster_rcnn",
    "dcgan",
    "captioner",
    "stn",
    "align",
)

_REGISTRY: dict[str, Family[Any]] = {}


def register_family(family: Family[Any]) -> Family[Any]:
    """Add a family under its name; a second family with the same name is a programming error."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def load_families() -> None:
    """Import every known family module so that it registers itself; modules not written yet are skipped."""
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(f"export.families.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"export.families.{module}":
                raise


def family_names() -> tuple[str, ...]:
    """Registered family names, in FAMILY_MODULES order (then any others, sorted)."""
    load_families()
    known = [name for name in FAMILY_MODULES if name in _REGISTRY]
    return tuple(known + sorted(set(_REGISTRY) - set(known)))


def get_family(name: str) -> Family[Any]:
    """The family registered under ``name``; an unknown name raises ExportError listing the known ones."""
    load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ExportError(f"unknown family {name!r}; known families: {', '.join(family_names())}") from None
