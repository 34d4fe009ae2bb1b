"""The CUDA EP path on a real GPU without TensorRT (issue 12); every test skips cleanly without a GPU.

Run on a GPU host with `pytest -m gpu tests/serving/test_gpu_path.py` (scripts/gpu_check.sh does).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backends import Backend, BackendSettings, tensorrt_loadable
from serving.backends.fixed_shapes import FixedShapeBackend, open_fixed_shapes
from serving.backends.io_binding import BoundRung, bound_rung
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.ladder import batch_ladder, rung_for
from serving.models import ModelManager
from serving.placement import CPU, Device, discover_gpus
from tests.protocols.repositories import tiny_classifier_logits
from tests.serving import tiny_repository as tiny

pytestmark = pytest.mark.gpu

#: Batch sizes in an order that changes shape at almost every step, as a dynamic batcher does.
MIXED_STREAM = (3, 1, 7, 16, 5, 9, 2, 12, 1, 16, 6, 4, 11, 8, 13, 2) * 4


@pytest.fixture(scope="module")
def gpu() -> Device:
    """The first visible GPU, when this onnxruntime can use it; else the test is skipped."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA EP (CPU wheel)")
    gpus = discover_gpus()
    if not gpus:
        pytest.skip("no GPU visible (NVML found none, or nvidia-ml-py is not installed)")
    return Device(gpus[0])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_repository(tmp_path_factory.mktemp("gpu") / "repository")


def feeds_for(backend: Backend, items: int) -> dict[str, np.ndarray]:
    """Deterministic inputs of `items` rows: smooth patterns for floats, small ids for integers."""
    feeds = {}
    for spec in backend.inputs:
        shape = (items, *(1 if dim == -1 else dim for dim in spec.shape[1:]))
        if np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = (np.arange(int(np.prod(shape))) % 3).reshape(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.sin(np.arange(int(np.prod(shape))) / 7.0).reshape(shape).astype(spec.dtype)
    return feeds


def test_a_gpu_instance_runs_on_the_cuda_ep_and_never_asks_for_a_missing_tensorrt(
    gpu: Device, tiny_models: Path
) -> None:
    backend = OnnxRuntimeBackend(tiny_models / "tiny_classify" / "1" / "model.onnx", gpu, BackendSettings(), 1)
    assert "CUDAExecutionProvider" in backend.providers
    if not tensorrt_loadable():
        assert "TensorrtExecutionProvider" not in backend.providers
    images = feeds_for(backend, 4)["images"]
    np.testing.assert_allclose(backend.infer({"images": images})["logits"], tiny_classifier_logits(images),
                               rtol=1e-3, atol=1e-4)
    backend.close()


def test_every_small_family_answers_on_the_gpu_as_on_the_cpu(gpu: Device, small_repository: Path) -> None:
    """fp32 graphs; the CUDA EP may use TF32 convolutions (10-bit mantissa), hence 1e-2 of the output's scale."""
    graphs = sorted(small_repository.glob("*/1/model.onnx"))
    assert graphs, f"no models in {small_repository}"
    for path in graphs:
        on_cpu = OnnxRuntimeBackend(path, CPU, BackendSettings(), 2)
        on_gpu = OnnxRuntimeBackend(path, gpu, BackendSettings(), 1)
        feeds = feeds_for(on_cpu, 4)
        expected, actual = on_cpu.infer(feeds), on_gpu.infer(feeds)
        for name, array in expected.items():
            where = f"{path.parent.parent.name} output {name}"
            if np.issubdtype(array.dtype, np.floating):
                scale = max(1.0, float(np.abs(array).max()))
                np.testing.assert_allclose(actual[name], array, rtol=1e-2, atol=1e-2 * scale, err_msg=where)
            else:
                np.testing.assert_array_equal(actual[name], array, err_msg=where)
        on_cpu.close()
        on_gpu.close()


def _median_run_s(backend: FixedShapeBackend, feeds: dict[str, np.ndarray], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.infer(feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_a_mixed_size_stream_costs_no_more_than_its_rungs(gpu: Device, small_repository: Path) -> None:
    """The re-planning a CUDA session pays on every new shape (90-400 ms on an H100) never happens.

    Generous bound (a regression costs 100x, not 2x): the mixed stream may take twice the sum of its
    rungs' medians plus 1 ms a batch, measured on the same warmed sessions.
    """
    path = small_repository / "resnet_small" / "1" / "model.onnx"
    ladder = batch_ladder(16)
    backend = open_fixed_shapes(ladder, lambda rows: OnnxRuntimeBackend(path, gpu, BackendSettings(), 1))
    rung_s = {rung: _median_run_s(backend, feeds_for(backend, rung)) for rung in ladder}  # also warms each rung
    stream = [feeds_for(backend, items) for items in MIXED_STREAM]
    started = time.perf_counter()
    for feeds in stream:
        backend.infer(feeds)
    mixed_s = time.perf_counter() - started
    budget_s = 2 * sum(rung_s[rung_for(items, ladder)] for items in MIXED_STREAM) + 1e-3 * len(MIXED_STREAM)
    assert mixed_s <= budget_s, f"mixed stream {mixed_s * 1e3:.1f} ms > {budget_s * 1e3:.1f} ms (rungs {rung_s})"
    backend.close()


def test_bound_rungs_keep_their_inputs_and_outputs_in_cuda_memory_and_answer_right(
    gpu: Device, tiny_models: Path
) -> None:
    """IOBinding on the CUDA EP: the buffers live on the device, stay put from batch to batch, and a
    mixed stream (padded rungs included) answers as the graph computes."""
    path = tiny_models / "tiny_classify" / "1" / "model.onnx"
    ladder = batch_ladder(16)
    backend = open_fixed_shapes(
        ladder, lambda rows: bound_rung(OnnxRuntimeBackend(path, gpu, BackendSettings(), 1), rows, gpu)
    )
    rungs = [backend._rungs[rows] for rows in ladder]
    assert all(isinstance(rung, BoundRung) for rung in rungs)
    rng = np.random.default_rng(0)

    def buffers() -> list[Any]:
        return [v for rung in rungs for v in (*rung._device_inputs.values(), *rung.bound_outputs.values())]  # type: ignore[attr-defined]

    addresses: list[int] = []
    for index, items in enumerate((*ladder, *MIXED_STREAM)):
        images = rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32)
        logits = backend.infer({"images": images})["logits"]
        np.testing.assert_allclose(logits, tiny_classifier_logits(images), rtol=1e-3, atol=1e-4)
        if index == len(ladder) - 1:  # every rung has run: its inputs are bound
            assert buffers() and {value.device_name().lower() for value in buffers()} == {"cuda"}
            addresses = [value.data_ptr() for value in buffers()]
    assert [value.data_ptr() for value in buffers()] == addresses
    backend.close()


def test_two_instances_share_one_gpu_and_both_answer(gpu: Device, tiny_models: Path, tmp_path: Path) -> None:
    config = (tiny_models / "tiny_classify" / "config.pbtxt").read_text()
    group = f"instance_group [ {{ kind: KIND_GPU count: 2 gpus: [ {gpu.gpu.index} ] }} ]\n"  # type: ignore[union-attr]
    repository = tmp_path / "repository"
    folder = repository / "tiny_classify"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes((tiny_models / "tiny_classify" / "1" / "model.onnx").read_bytes())
    (folder / "labels.txt").write_text((tiny_models / "tiny_classify" / "labels.txt").read_text())
    (folder / "config.pbtxt").write_text(re.sub(r"instance_group \[.*\]\n", "", config) + group)

    async def scenario() -> None:
        manager = ModelManager(repository, gpus=[gpu.gpu])  # type: ignore[list-item]
        await manager.load_all()
        model = manager.get("tiny_classify")
        assert [p.device.label for p in model.placements] == [gpu.label, gpu.label]
        assert all(isinstance(b, FixedShapeBackend) for b in model._backends)
        assert all(isinstance(rung, BoundRung) for b in model._backends for rung in b._rungs.values())  # type: ignore[attr-defined]
        rng = np.random.default_rng(0)
        batches = [rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32) for items in (1, 5, 16, 3) * 8]
        answers = await asyncio.gather(*(model.infer({"images": images}) for images in batches))
        for images, answer in zip(batches, answers, strict=True):
            np.testing.assert_allclose(answer["logits"], tiny_classifier_logits(images), rtol=1e-3, atol=1e-4)
        assert model.stats().execution_count >= 2
        await manager.close()

    asyncio.run(scenario())
