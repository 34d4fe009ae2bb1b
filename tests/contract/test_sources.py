"""The digest the demo's stamp and the test fixture's cache key are made of."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract import sources


def test_the_digest_covers_export_and_contract_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for package in sources.PACKAGES:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "module.py").write_text("x = 1\n")
    monkeypatch.setattr(sources, "_ROOT", tmp_path)
    first = sources.export_sources_digest()
    assert len(first) == 64 and first == sources.export_sources_digest()
    (tmp_path / "README.md").write_text("not a source\n")
    assert sources.export_sources_digest() == first
    for package in sources.PACKAGES:
        (tmp_path / package / "sub" / "module.py").write_text(f"x = 2  # {package}\n")
        changed = sources.export_sources_digest()
        assert changed != first, package
        first = changed
