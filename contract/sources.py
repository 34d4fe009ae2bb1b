"""Which sources an exported model repository depends on, as one digest.

A repository is what the export stage (export/) makes from the contract (contract/: scenes, names,
config.pbtxt); a change to either may change it. The demo stamps its repository with this digest and the
test fixture caches its own under it, so that neither reuses a repository of older sources.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGES = ("export", "contract")
"""The packages the digest covers; siblings of this one in the source tree and in site-packages alike."""
_ROOT = Path(__file__).resolve().parent.parent


def export_sources_digest() -> str:
    """sha256 over the relative path and bytes of every Python file of PACKAGES."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
