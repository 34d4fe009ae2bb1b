"""Regenerate the Python modules beside every .proto under protos/ (`make proto`).

Paths are compiled relative to the repository root, so generated modules import each other
as `protos.<package path>` and need nothing added to sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def proto_files() -> list[Path]:
    """Every .proto file this project owns, in a stable order."""
    return sorted((ROOT / "protos").rglob("*.proto"))


def generate(out_dir: Path = ROOT) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for each proto into `out_dir` (mirrors protos/)."""
    include = Path(protoc.__file__).parent / "_proto"
    for proto in proto_files():
        rel = proto.relative_to(ROOT)
        args = [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {rel}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
