"""The TensorRT engine-cache init step (scripts/engine_cache.py) on a real repository layout.

Building an engine needs an NVIDIA GPU; here the build step is a stand-in that writes bytes and
records its calls, so the cache logic (keys, reuse, failure markers, the view the server reads) is
checked on CPU. The real TensorRT build runs in the `gpu`-marked test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clients.client import VisionClient
from tests.deploy.deploy_support import ROOT
from tests.serving.conftest import start_server
from tests.serving.tiny_repository import write_tiny_repository

spec = importlib.util.spec_from_file_location("engine_cache", ROOT / "scripts" / "engine_cache.py")
assert spec is not None and spec.loader is not None
engine_cache = importlib.util.module_from_spec(spec)
sys.modules["engine_cache"] = engine_cache  # dataclasses look their module up there
spec.loader.exec_module(engine_cache)

CONFIG = """name: "{name}"
platform: "{platform}"
max_batch_size: {batch}
input [ {{ name: "images" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }} ]
"""


def write_tiny_graph(path: Path) -> None:
    """images FP32 [B, 3, 8, 8] -> logits FP32 [B, 3]: global average pool + flatten."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_model(repository: Path, name: str, versions: tuple[str, ...] = ("1",),
               platform: str = "onnxruntime_onnx", batch: int = 8) -> None:
    folder = repository / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name, platform=platform, batch=batch))
    (folder / "labels.txt").write_text("a\nb\nc\n")
    for version in versions:
        write_tiny_graph(folder / version / "model.onnx")


class RecordingBuilder:
    """Stand-in for the GPU build: writes a marker plan, or raises for the graphs named in `failing`."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.failing = failing

    def __call__(self, job, plan_path: Path) -> None:
        self.calls.append((job.model, job.version, job.max_batch_size))
        if job.model in self.failing:
            plan_path.write_bytes(b"half")
            raise RuntimeError("unsupported operator NonMaxSuppression")
        plan_path.write_bytes(f"plan {job.model}/{job.version}".encode())


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_model(root, "resnet_small", versions=("1", "2"))
    make_model(root, "vgg_small", batch=16)
    make_model(root, "faster_rcnn_small")
    make_model(root, "plan_only", platform="tensorrt_plan")
    (root / "not_a_model").mkdir()
    return root


def test_cache_key_names_arch_and_tensorrt_version() -> None:
    assert engine_cache.cache_key("sm90", "10.16.1.11") == "sm90-trt10.16.1.11"


def test_jobs_are_the_onnx_versions_with_their_batch_size(repository: Path) -> None:
    jobs = engine_cache.find_engine_jobs(repository)
    assert [(job.model, job.version, job.max_batch_size) for job in jobs] == [
        ("faster_rcnn_small", "1", 8), ("resnet_small", "1", 8), ("resnet_small", "2", 8), ("vgg_small", "1", 16)]


def test_a_model_whose_config_does_not_parse_is_skipped_not_fatal(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repository / "vgg_small" / "config.pbtxt").write_text('name: "vgg_small"\nmax_batch_size: "sixteen"\n')
    jobs = engine_cache.find_engine_jobs(repository)
    assert "vgg_small" not in {job.model for job in jobs} and "resnet_small" in {job.model for job in jobs}
    assert "skipping vgg_small: config.pbtxt:" in capsys.readouterr().err


def test_second_pod_on_the_same_gpu_builds_nothing(repository: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / engine_cache.cache_key("sm90", "10.16.1.11")
    first = RecordingBuilder(failing=frozenset({"faster_rcnn_small"}))
    report = engine_cache.fill_cache(repository, cache, "sm90", first)
    assert report.built == ("resnet_small/1", "resnet_small/2", "vgg_small/1")
    assert report.failed == ("faster_rcnn_small/1",)
    assert (cache / "resnet_small" / "2" / "model.sm90.plan").read_bytes() == b"plan resnet_small/2"
    assert not list(cache.rglob("*.partial")), "a failed build leaves no partial engine"

    second = RecordingBuilder()
    report = engine_cache.fill_cache(repository, cache, "sm90", second)
    assert second.calls == [], "warm cache: no build, and a graph TensorRT refused is not retried"
    assert report.reused == ("resnet_small/1", "resnet_small/2", "vgg_small/1")
    assert report.failed == ("faster_rcnn_small/1",)


def test_another_gpu_architecture_gets_its_own_engines(repository: Path, tmp_path: Path) -> None:
    engine_cache.fill_cache(repository, tmp_path / "cache" / "sm90-trt10", "sm90", RecordingBuilder())
    other = RecordingBuilder()
    engine_cache.fill_cache(repository, tmp_path / "cache" / "sm80-trt10", "sm80", other)
    assert len(other.calls) == 4


def test_engine_shipped_in_the_repository_is_not_rebuilt(repository: Path, tmp_path: Path) -> None:
    (repository / "vgg_small" / "1" / "model.sm90.plan").write_bytes(b"exported with --tensorrt")
    builder = RecordingBuilder()
    report = engine_cache.fill_cache(repository, tmp_path / "cache", "sm90", builder)
    assert "vgg_small/1" in report.reused
    assert ("vgg_small", "1", 16) not in builder.calls


def test_view_is_the_repository_plus_this_gpus_engines(repository: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "sm90-trt10"
    engine_cache.fill_cache(repository, cache, "sm90", RecordingBuilder(failing=frozenset({"faster_rcnn_small"})))
    view = tmp_path / "view"
    for _ in range(2):  # an init container that runs again (pod restart) finds the view already there
        engine_cache.link_view(repository, cache, "sm90", view)
    assert sorted(path.name for path in view.iterdir()) == [
        "faster_rcnn_small", "plan_only", "resnet_small", "vgg_small"]
    config = "resnet_small/config.pbtxt"
    assert (view / config).read_text() == (repository / config).read_text()
    assert onnx.load(view / "resnet_small" / "2" / "model.onnx").graph.name == "tiny"
    assert (view / "resnet_small" / "2" / "model.sm90.plan").read_bytes() == b"plan resnet_small/2"
    assert not (view / "faster_rcnn_small" / "1" / "model.sm90.plan").exists()
    files = [path for path in view.rglob("*") if not path.is_dir()]
    assert files and all(path.is_symlink() for path in files), "the view holds links only, no copies"


def test_tensorrt_ep_cache_link_points_into_the_keyed_cache(tmp_path: Path) -> None:
    keyed = tmp_path / "cache" / "sm90-trt10"
    link = tmp_path / "work" / "tensorrt-ep"
    for _ in range(2):  # idempotent across init container reruns
        engine_cache.link_ep_cache(keyed, link)
    assert link.is_symlink() and link.resolve() == (keyed / "onnxruntime").resolve()
    (link / "sm90").mkdir()  # what the server's TensorRT EP does under NINEFOLD_TENSORRT_CACHE_DIR
    assert (keyed / "onnxruntime" / "sm90").is_dir()


def test_server_serves_from_the_view(tmp_path: Path) -> None:
    """The real server loads every model through the view's symlinks and answers a call."""
    repository = write_tiny_repository(tmp_path / "models")
    view = tmp_path / "work" / "repository"
    engine_cache.link_view(repository, tmp_path / "cache" / "sm90-trt10", "sm90", view)
    server = start_server(view)
    try:
        with VisionClient(server.target) as client:
            served = {model.name for model in client.list_models()}
            answer = client.classify([np.zeros((8, 8, 3), dtype=np.uint8)], top_k=1)
    finally:
        assert server.stop() == 0, server.log()
    assert served == {path.name for path in repository.iterdir()}
    assert len(answer.results[0].predictions) == 1


def test_cli_refuses_a_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = engine_cache.main(["--model-repository", str(tmp_path / "absent"), "--cache", str(tmp_path),
                              "--view", str(tmp_path / "view"), "--arch", "sm90"])
    assert code == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.gpu
def test_tensorrt_builds_a_real_engine(tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is installed with the gpu extra on GPU machines")
    try:
        arch = engine_cache.detect_gpu_arch()
    except Exception as error:  # noqa: BLE001 - NVML missing or no GPU
        pytest.skip(f"no NVIDIA GPU: {error}")
    root = tmp_path / "models"
    make_model(root, "tiny")
    (job,) = engine_cache.find_engine_jobs(root)
    plan = tmp_path / f"model.{arch}.plan"
    engine_cache.build_with_tensorrt(job, plan)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
