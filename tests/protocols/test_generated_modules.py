"""The committed *_pb2*.py modules are exactly what `make proto` (python -m protos.generate) writes."""

from __future__ import annotations

from pathlib import Path

from protos.generate import ROOT, generate, proto_files


def test_regenerating_every_proto_changes_nothing(tmp_path: Path) -> None:
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert len(generated) == 3 * len(proto_files())  # _pb2.py, _pb2.pyi, _pb2_grpc.py each
    stale = [str(rel) for rel in generated if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"run `make proto` and commit: {stale}"
