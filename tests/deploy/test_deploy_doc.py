"""docs/DEPLOY.md names only files that exist, and every kustomization it tells users to apply builds."""

from __future__ import annotations

import re

from tests.deploy.deploy_support import OVERLAYS, ROOT

DOC = ROOT / "docs" / "DEPLOY.md"
PATH_PATTERN = re.compile(r"(?<![\w/.])((?:k8s|scripts|docker|tests|docs)/[\w./-]*[\w/]|Dockerfile|\.dockerignore)")


def test_every_file_the_guide_names_exists() -> None:
    named = set(PATH_PATTERN.findall(DOC.read_text()))
    assert len(named) > 20, named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"docs/DEPLOY.md names files that do not exist: {missing}"


def test_every_applied_kustomization_is_checked() -> None:
    applied = set(re.findall(r"kubectl apply -k (k8s/[\w/]+)", DOC.read_text()))
    assert applied == {"k8s/overlays/gpu", "k8s/overlays/cpu", "k8s/kserve"}
    assert {path.removeprefix("k8s/") for path in applied} <= set(OVERLAYS)
