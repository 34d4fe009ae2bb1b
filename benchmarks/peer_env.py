"""The peer server's own virtual environment (KServe pins protobuf 6; ninefold uses 7).

Created once under .cache/bench/kserve-venv with `pip install kserve==0.21.0` plus what the shared
classify pipeline needs. ninefold's generated protobuf modules need the protobuf 7 runtime, so it
is installed over KServe's pin; KServe's own generated modules load under 7 (checked by importing
the server before the benchmark uses it).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

KSERVE = "kserve==0.21.0"
EXTRA = ("onnxruntime==1.32.0", "protobuf==7.36.2", "pillow>=11", "numpy>=1.26", "simplejpeg==1.9.0")


def peer_python(cache: Path) -> Path:
    """The peer venv's python, creating and filling the venv on first use (again when the list changes)."""
    root = cache / "kserve-venv"
    python = root / "bin" / "python"
    stamp = root / ".ready"
    wanted = "\n".join((KSERVE, *EXTRA))
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"bench: preparing the peer environment in {root} (once)", file=sys.stderr, flush=True)
    if not python.exists():
        venv.create(root, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, KSERVE], check=True)
    subprocess.run([*pip, *EXTRA], check=True)
    subprocess.run([str(python), "-c", "import kserve, onnxruntime, PIL, simplejpeg"], check=True)
    stamp.write_text(wanted)
    return python
