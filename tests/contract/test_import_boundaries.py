"""The import rules of docs/ARCHITECTURE.md, checked in fresh interpreters (a module imported by an earlier
test would hide what an import really pulls in).

contract -> numpy, protobuf and the generated protos only; clients -> contract and the protos, never the
server or torch; export -> never the server. (serving -> never export or torch: tests/serving/test_no_torch.py.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def loaded_by(statement: str, *roots: str) -> list[str]:
    """The modules under `roots` (top-level package names) that `statement` leaves in sys.modules."""
    script = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(roots)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def every_module(package: str) -> str:
    """A statement importing every module of `package`."""
    return (
        f"import importlib, pkgutil, {package}\n"
        f"for module in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(module.name)"
    )


@pytest.mark.parametrize("module", ["clients", "clients.v2", "clients.client", "clients.cli", "clients.demo"])
def test_a_client_module_loads_neither_the_server_nor_export_nor_torch(module: str) -> None:
    assert loaded_by(f"import {module}", "serving", "export", "torch") == []


def test_the_contract_loads_nothing_of_the_stages_nor_grpc_nor_torch() -> None:
    loaded = loaded_by(every_module("contract"), "contract", "serving", "export", "clients", "torch", "grpc")
    assert "contract.scenes" in loaded  # the walk did import every module
    assert [name for name in loaded if not name.startswith("contract")] == []


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import statement in a source file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_export_stage_never_imports_the_server() -> None:
    """Read, not run (importing export means importing torch: seconds): an export module importing serving
    directly is the only way in, since the contract's own imports are checked above."""
    sources = sorted((ROOT / "export").rglob("*.py"))
    assert [str(p.relative_to(ROOT)) for p in sources if "serving" in imported_packages(p)] == []
    assert "contract" in imported_packages(ROOT / "export" / "repository.py")  # the reader sees imports
