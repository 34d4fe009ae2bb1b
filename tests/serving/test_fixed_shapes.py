"""Fixed batch shapes (the GPU path's ladder) on real CPU ONNX Runtime sessions.

A GPU instance runs only the ladder's batch sizes, one session per size; the logic is the same on
the CPU (`--fixed-shapes all`), so it is checked here: every session sees one shape, padding rows
never reach an answer, and answers equal those of one dynamic session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from serving.backends import BackendSettings
from serving.backends.fixed_shapes import FixedShapeBackend, runs_fixed_shapes, warm_batch_sizes
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.batching import BatchPolicy, DynamicBatcher
from serving.ladder import batch_ladder, pad_rows, requests_to_take, rung_for
from serving.models import ModelManager
from serving.placement import CPU, Device, Gpu
from serving.stats import ModelStatistics
from tests.protocols.repositories import tiny_classifier_logits
from tests.serving import tiny_repository as tiny
from tests.serving.test_batching import GatedRunner, doubler, on_event_loop, rows  # noqa: F401  (fixture)

H100 = Device(Gpu(0, "GPU-a", "NVIDIA H100", (9, 0)))
#: Batch sizes in an order that changes shape at almost every step, as a dynamic batcher does.
MIXED_STREAM = (3, 1, 7, 16, 5, 9, 2, 12, 1, 16, 6)


def test_the_ladder_is_powers_of_two_the_preferred_sizes_and_the_maximum() -> None:
    assert batch_ladder(32) == (1, 2, 4, 8, 16, 32)
    assert batch_ladder(24, (12,)) == (1, 2, 4, 8, 12, 16, 24)
    assert batch_ladder(1) == (1,)
    assert batch_ladder(0) == ()
    assert [rung_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="larger than the largest batch size 8"):
        rung_for(9, (1, 2, 4, 8))


def test_a_batch_is_cut_back_to_a_rung_it_fills_rather_than_padded_far() -> None:
    ladder = batch_ladder(32)
    assert requests_to_take([1] * 9, ladder) == 8  # 9 -> 16 would be 7 rows of padding for 1 row over 8
    assert requests_to_take([1] * 12, ladder) == 12  # 4 over 8 vs 4 of padding: pad
    assert requests_to_take([2, 2, 2, 2, 1], ladder) == 4
    assert requests_to_take([3, 6], ladder) == 2  # no prefix fills a rung
    assert requests_to_take([1] * 16, ladder) == 16


def test_padding_adds_zero_rows_and_keeps_the_rows_given() -> None:
    padded = pad_rows({"x": np.ones((3, 2), np.float32), "t": np.array([[5], [6], [7]])}, 4)
    assert padded["x"].tolist() == [[1, 1], [1, 1], [1, 1], [0, 0]]
    assert padded["t"].dtype == np.int64 and padded["t"][:, 0].tolist() == [5, 6, 7, 0]


def test_gpu_instances_get_fixed_shapes_and_cpu_instances_only_when_asked() -> None:
    assert runs_fixed_shapes(BackendSettings(), H100, "onnxruntime")
    assert not runs_fixed_shapes(BackendSettings(), CPU, "onnxruntime")
    assert runs_fixed_shapes(BackendSettings(fixed_shapes="all"), CPU, "onnxruntime")
    assert not runs_fixed_shapes(BackendSettings(fixed_shapes="off"), H100, "onnxruntime")
    assert not runs_fixed_shapes(BackendSettings(), H100, "tensorrt")


class ShapeRecorder:
    """A real backend that notes the batch size of every run: which shapes its session met."""

    def __init__(self, backend: OnnxRuntimeBackend) -> None:
        self.backend = backend
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self.batch_sizes: list[int] = []

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batch_sizes.append(next(iter(inputs.values())).shape[0])
        return self.backend.infer(inputs)

    def close(self) -> None:
        self.backend.close()


def random_feeds(backend: OnnxRuntimeBackend, items: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in backend.inputs:
        shape = (items, *spec.shape[1:])
        if spec.dtype == np.int64:  # the caption decoder's token ids
            feeds[spec.name] = rng.integers(0, len(tiny.CAPTION_VOCABULARY), shape)
        else:
            feeds[spec.name] = rng.normal(size=shape).astype(spec.dtype)
    return feeds


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_repository(tmp_path_factory.mktemp("fixed") / "repository")


def assert_fixed_shapes_answer_as_dynamic(path: Path, stream: Sequence[int]) -> None:
    """Run `stream` (batch sizes) through a ladder of recorded sessions and through one dynamic session."""
    settings = BackendSettings()
    recorders = {rung: ShapeRecorder(OnnxRuntimeBackend(path, CPU, settings, 1)) for rung in batch_ladder(16)}
    fixed = FixedShapeBackend(recorders)
    dynamic = OnnxRuntimeBackend(path, CPU, settings, 1)
    rng = np.random.default_rng(0)
    for items in stream:
        feeds = random_feeds(dynamic, items, rng)
        answer, expected = fixed.infer(feeds), dynamic.infer(feeds)
        assert set(answer) == set(expected)
        for name, array in expected.items():
            assert answer[name].shape == array.shape, name  # the padding rows were dropped
            np.testing.assert_allclose(answer[name], array, rtol=1e-5, atol=1e-5, err_msg=name)
    for rung, recorder in recorders.items():
        assert set(recorder.batch_sizes) <= {rung}, f"the batch-{rung} session ran {set(recorder.batch_sizes)}"
    assert {s for r in recorders.values() for s in r.batch_sizes} == {rung_for(n, fixed.ladder) for n in stream}
    fixed.close()
    dynamic.close()


@pytest.mark.parametrize("model", ["tiny_classify", "tiny_detect", "tiny_caption_decoder", "tiny_generate"])
def test_a_mixed_stream_runs_only_rung_shapes_and_answers_as_a_dynamic_session(tiny_models: Path, model: str) -> None:
    assert_fixed_shapes_answer_as_dynamic(tiny_models / model / "1" / "model.onnx", MIXED_STREAM)


@pytest.mark.parametrize("model", ["faster_rcnn_small", "captioner_small_decoder"])
def test_detection_and_caption_decoder_graphs_take_padded_batches(small_repository: Path, model: str) -> None:
    """The trained graphs with per-image post-processing (detection) and a recurrent step (decoder)."""
    assert_fixed_shapes_answer_as_dynamic(small_repository / model / "1" / "model.onnx", (3, 1, 6, 2))


@on_event_loop
async def test_the_batcher_fills_a_rung_and_the_overflow_leads_the_next_batch(doubler: Path) -> None:  # noqa: F811
    runner = GatedRunner(doubler)
    stats = ModelStatistics("doubler", 1, "")
    batcher = DynamicBatcher("doubler", BatchPolicy(max_batch_size=16), [runner], stats, ladder=batch_ladder(16))
    batcher.start()
    first = asyncio.ensure_future(batcher.submit({"x": rows(1)}, 1))
    await runner.wait_started()
    nine = [asyncio.ensure_future(batcher.submit({"x": rows(1, float(i))}, 1)) for i in range(9)]
    await asyncio.sleep(0)
    runner.gate.set()
    results = await asyncio.gather(first, *nine)
    assert runner.batch_sizes == [1, 8, 1]
    assert [float(r["y"][0, 0]) for r in results[1:]] == [2.0 * i for i in range(9)]
    assert stats.snapshot().pending == 0
    await batcher.close()


def test_a_repository_served_with_fixed_shapes_warms_every_rung_and_answers_right(tiny_models: Path) -> None:
    async def scenario() -> None:
        manager = ModelManager(tiny_models, BackendSettings(fixed_shapes="all"))
        await manager.load_all()
        model = manager.get("tiny_classify")
        backend = model._backends[0]
        assert isinstance(backend, FixedShapeBackend)
        assert warm_batch_sizes(backend) == batch_ladder(model.max_batch_size) == (1, 2, 4, 8, 16)
        rng = np.random.default_rng(1)
        for items in (3, 16, 5):
            images = rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32)
            logits = (await model.infer({"images": images}))["logits"]
            np.testing.assert_allclose(logits, tiny_classifier_logits(images), rtol=1e-5, atol=1e-6)
        await manager.close()
        plain = ModelManager(tiny_models)  # the default: CPU instances keep dynamic shapes
        await plain.load_all()
        assert isinstance(plain.get("tiny_classify")._backends[0], OnnxRuntimeBackend)
        await plain.close()

    asyncio.run(scenario())
