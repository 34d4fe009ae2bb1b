"""docs/PROTOCOLS.md's tritonclient install line brings everything `import tritonclient.grpc` needs.

The example installs tritonclient without its `[grpc]` extra (that extra pins protobuf<7, which
ninefold does not run), so the line must name what the extra would have brought: without protobuf
the import fails with "No module named 'google'" in a fresh virtualenv.
"""

from __future__ import annotations

import re
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.docs.doc_examples import ROOT

INSTALL_LINE = re.compile(r"^# pip install (?P<packages>[\w\s.-]+?)\s{2,}", re.MULTILINE)


def test_protocols_install_line_names_the_grpc_extras_packages() -> None:
    found = INSTALL_LINE.search((ROOT / "docs" / "PROTOCOLS.md").read_text())
    assert found, "docs/PROTOCOLS.md: no `# pip install ...` line in the tritonclient example"
    named = {canonicalize_name(package) for package in found["packages"].split()}
    requirements = [Requirement(text) for text in requires("tritonclient") or []]
    always = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    grpc_extra = {
        canonicalize_name(r.name) for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "grpc"})
    }
    assert "tritonclient" in named
    missing = sorted(grpc_extra - always - named)
    assert not missing, f"docs/PROTOCOLS.md: the tritonclient install line leaves out {missing}"
