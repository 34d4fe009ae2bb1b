"""docs/DEPLOY.md names only files that exist, and every kustomization it tells users to apply builds."""

from __future__ import annotations

import re

import yaml

from tests.deploy.deploy_support import K8S, OVERLAYS, ROOT

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


def test_every_image_a_kustomization_runs_is_built_and_pushed() -> None:
    """The guide builds and pushes every image tag the kustomizations name (the cpu overlay runs -cpu)."""
    text = DOC.read_text()
    built = set(re.findall(r"docker build [^\n]*-t \$REGISTRY/(ninefold:[\w.-]+)", text))
    pushed = set(re.findall(r"docker push \$REGISTRY/(ninefold:[\w.-]+)", text))
    used = set()
    for overlay in OVERLAYS:
        spec = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        used |= {f"ninefold:{image['newTag']}" for image in spec.get("images", [])}
    assert used, "no kustomization names an image"
    assert used <= built, f"not built in docs/DEPLOY.md: {sorted(used - built)}"
    assert used <= pushed, f"not pushed in docs/DEPLOY.md: {sorted(used - pushed)}"
    assert built == pushed
