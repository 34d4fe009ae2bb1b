"""Every shell and Python example of README.md and docs/*.md runs as written, against a real server.

The convention (which blocks run, how one is marked as not run) is in tests/docs/doc_examples.py
and docs/CLIENTS.md. One server on the small repository serves every example. Each example runs on
its own in a fresh folder holding the pictures the docs name (synthetic scenes the small models
know), with `ninefold` and `python` of this environment on PATH, NINEFOLD_SERVER set to the
server, and `localhost:8001` / `localhost:8002` / `localhost:8000` in its text replaced by the server's
gRPC, metrics and HTTP addresses (the defaults of `ninefold serve`, which a test cannot take on a shared machine).
The server's resnet_small runs with the config.pbtxt printed in docs/MODEL_REPOSITORY.md, so
that example is pasted beside the shipped model and loaded too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from clients.client import VisionClient
from clients.server_process import ServerProcess
from contract.scenes import make_scenes
from tests.docs.doc_examples import ROOT, Example, documents, examples

pytestmark = pytest.mark.slow

DOC_EXAMPLES, _ = examples(documents())  # misplaced markers: tests/docs/test_doc_collector.py
EXAMPLE_TIMEOUT_S = 120
OUTPUT_TAIL_CHARS = 3000
DOCUMENTED_CONFIG = "docs/MODEL_REPOSITORY.md"


def documented_config() -> str:
    """The config.pbtxt example of docs/MODEL_REPOSITORY.md (the bare block that starts with `name:`)."""
    text = (ROOT / DOCUMENTED_CONFIG).read_text()
    found = re.search(r'^```\n(name: "resnet_small"\n.*?)^```$', text, re.MULTILINE | re.DOTALL)
    assert found, f"{DOCUMENTED_CONFIG} has no config.pbtxt block starting with name: \"resnet_small\""
    return found.group(1)


@pytest.fixture(scope="module")
def docs_server(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("docs_server")
    repository = folder / "model_repository"
    shutil.copytree(small_repository, repository)
    (repository / "resnet_small" / "config.pbtxt").write_text(documented_config())
    with ServerProcess.start(repository, log=folder / "server.log", extra_args=["--ort-threads", "1"]) as server:
        yield server


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, made once: scenes of the eight shapes the small models know."""
    folder = tmp_path_factory.mktemp("doc_pictures")
    plain = make_scenes(6, 64, seed=0)
    busy = make_scenes(1, 96, seed=1, objects=3)[0]
    distorted = make_scenes(1, 64, seed=2, distort=True)[0]
    for name, scene in zip(
        ["scene.png", "other.png", "picture.jpg", "cat.jpg", "chelsea.jpg", "coffee.jpg"], plain, strict=True
    ):
        Image.fromarray(scene.image).save(folder / name)
    Image.fromarray(busy.image).save(folder / "street.png")
    Image.fromarray(distorted.image).save(folder / "distorted.png")
    return folder


def test_the_documented_config_pbtxt_serves_the_shipped_model(docs_server: ServerProcess) -> None:
    with VisionClient(docs_server.target) as client:
        (info,) = [model for model in client.list_models() if model.name == "resnet_small"]
    assert info.ready, f"{DOCUMENTED_CONFIG}'s config.pbtxt beside the exported resnet_small: {info.state_reason}"


def _not_run(example: Example) -> list[pytest.MarkDecorator]:
    """A marked example is skipped, reported with its doc, line and reason."""
    return [] if example.skip_reason is None else [pytest.mark.skip(f"{example.where}: {example.skip_reason}")]


@pytest.mark.parametrize(
    "example", [pytest.param(example, id=example.where, marks=_not_run(example)) for example in DOC_EXAMPLES]
)
def test_doc_example_runs(example: Example, docs_server: ServerProcess, pictures: Path, tmp_path: Path) -> None:
    shutil.copytree(pictures, tmp_path, dirs_exist_ok=True)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # README's `.venv/bin/ninefold`
    metrics_address = urlsplit(docs_server.metrics_url).netloc
    code = (
        example.code.replace("localhost:8001", docs_server.target)
        .replace("localhost:8002", metrics_address)
        .replace("localhost:8000", docs_server.http_target)
    )
    script = tmp_path / f"example.{'sh' if example.language == 'bash' else 'py'}"
    script.write_text(code)
    interpreter = ["bash", "-e", "-o", "pipefail"] if example.language == "bash" else [sys.executable]
    command = [*interpreter, script.name]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "NINEFOLD_SERVER": docs_server.target,
    }
    try:
        finished = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{example.where}: the {example.language} example ran over {EXAMPLE_TIMEOUT_S} s", pytrace=False)
    if finished.returncode != 0:
        pytest.fail(
            f"{example.where}: the {example.language} example failed (exit {finished.returncode}); mark it with "
            f"`<!-- example: not run (REASON) -->` only if it cannot run here\n"
            f"--- stderr (end)\n{finished.stderr[-OUTPUT_TAIL_CHARS:]}\n--- stdout (end)\n"
            f"{finished.stdout[-OUTPUT_TAIL_CHARS:]}",
            pytrace=False,
        )
