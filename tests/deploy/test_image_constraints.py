"""docker/constraints.txt pins every package each image stage installs, not only the ones ninefold names.

The Dockerfile installs `ninefold[cpu]` or `ninefold[gpu]` (serving) and `ninefold[cpu,export]`
(export) with `--constraint docker/constraints.txt`; pip installs a package the file does not name
at whatever version is newest that day. So each stage's dependency closure, with the markers of the
images (CPython 3.12 on Linux x86_64), must be pinned with `==`, at versions the requirements allow.

Closures: the cpu and export stages from the metadata of the distributions installed in this test
environment (`make install` installs `.[cpu,export,...]`; torch's wheels publish no separate
metadata, so asking the registry would download gigabytes), reporting pins that differ from what
is installed; the gpu stage (not installable beside the cpu one) by pip's own resolver against the
package index, as a dry run for the image's platform.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.deploy_support import ROOT

CONSTRAINTS = ROOT / "docker" / "constraints.txt"
IMAGE_PYTHON = "3.12"
IMAGE_MARKERS = {
    "python_version": IMAGE_PYTHON, "python_full_version": f"{IMAGE_PYTHON}.12", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}
"""Environment markers of the images (python:3.12 slim and the CUDA image's python3.12, x86_64)."""
TENSORRT_STUBS = {"tensorrt-cu13", "tensorrt-cu13-libs", "tensorrt-cu13-bindings"}
"""Source-only on the package index (NVIDIA's wheel stubs fetch the real wheels from NVIDIA's own index at
build time), so pip's dry run cannot resolve them for another platform; they are checked as pinned."""


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; anything but `name==version` fails the test."""
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==" and not requirement.marker, f"not an exact pin: {line!r}"
            pinned[canonicalize_name(requirement.name)] = specifier.version
    return pinned


def stage_requirements(extras: Iterable[str]) -> list[Requirement]:
    """What `pip install ninefold[extras]` asks for, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether `requirement` is installed in the image when its parent was asked for with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**IMAGE_MARKERS, "extra": extra}) for extra in ("", *extras))


def installed_closure(roots: list[Requirement]) -> dict[str, list[Requirement]]:
    """{canonical name: the requirements that reach it}, walking the installed distributions' metadata."""
    reached: dict[str, list[Requirement]] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [requirement for requirement in roots if applies(requirement, ())]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        reached.setdefault(name, []).append(requirement)
        key = (name, frozenset(requirement.extras))
        if key in walked:
            continue
        walked.add(key)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed here; `make install` installs the cpu and export extras")
        todo += [child for child in map(Requirement, requires) if applies(child, requirement.extras)]
    return reached


def check_pinned(reached: dict[str, list[Requirement]], pinned: dict[str, str]) -> list[str]:
    """Problems: packages of the closure without a pin, and pins their requirements do not allow."""
    problems = []
    for name, requirements in sorted(reached.items()):
        if name not in pinned:
            problems.append(f"{name} is installed but not pinned")
            continue
        for requirement in requirements:
            if not requirement.specifier.contains(pinned[name], prereleases=True):
                problems.append(f"{name}=={pinned[name]} does not satisfy {requirement}")
    return problems


@pytest.mark.parametrize("extras", [("cpu",), ("cpu", "export")], ids=["cpu", "export"])
def test_every_package_of_a_cpu_stage_is_pinned(extras: tuple[str, ...]) -> None:
    pinned = pins()
    reached = installed_closure(stage_requirements(extras))
    assert not check_pinned(reached, pinned)
    differing = {name: (metadata.version(name), pinned[name]) for name in reached
                 if metadata.version(name) != pinned[name]}
    # The walk read these packages' dependencies from another release than the image gets (the dev
    # install does not use the constraints): close enough within a major version, not beyond.
    assert all(installed.split(".")[0] == pin.split(".")[0] for installed, pin in differing.values()), differing


@pytest.mark.slow
def test_every_package_of_the_gpu_stage_is_pinned(tmp_path: Path) -> None:
    """pip resolves the gpu stage for the image's platform without installing anything."""
    pinned = pins()
    requirements = [r for r in stage_requirements(("gpu",)) if canonicalize_name(r.name) not in TENSORRT_STUBS]
    assert set(pinned) >= TENSORRT_STUBS
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + ["manylinux2014_x86_64"]
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--target", str(tmp_path / "target"), "--only-binary=:all:", "--python-version", IMAGE_PYTHON,
               "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
               *(option for platform in platforms for option in ("--platform", platform)),
               "--constraint", str(CONSTRAINTS), "--report", str(report), *map(str, requirements)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and ("connection" in result.stderr.lower() or "could not fetch" in result.stderr.lower()):
        pytest.skip(f"the package index is not reachable: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
    unpinned = sorted(name for name in installed if name not in pinned)
    assert not unpinned, f"the gpu image would install these unpinned: {unpinned}"
    assert all(pinned[name] == version for name, version in installed.items())
