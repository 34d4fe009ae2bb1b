"""IOBinding of fixed-shape rungs (serving.backends.io_binding) on real CPU ONNX Runtime sessions.

A GPU instance binds every rung of its ladder to buffers allocated once; the logic is the same on
the CPU (`--fixed-shapes all --io-binding all`), so it is checked here: answers identical to the
unbound path for every rung (padded ones included), buffers reused, padding rows zero, concurrent
callers kept apart, and a real server answering with it on. The CUDA buffers: tests/serving/test_gpu_path.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients.server_process import ServerProcess
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from serving.backends import BackendSettings
from serving.backends.fixed_shapes import FixedShapeBackend, open_fixed_shapes
from serving.backends.io_binding import BoundRung, runs_io_binding
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.batching import BatchPolicy, DynamicBatcher
from serving.config import load_config
from serving.deferred import DeferredRows, RowWriter
from serving.errors import InvalidArgument
from serving.ladder import batch_ladder
from serving.models import ModelManager
from serving.placement import CPU
from serving.stats import ModelStatistics
from tests.protocols.repositories import tiny_classifier_logits
from tests.serving import tiny_repository as tiny
from tests.serving.conftest import start_server
from tests.serving.test_fixed_shapes import H100, MIXED_STREAM, random_feeds
from tests.serving.test_vision_tiny import normalised, uniform
from tests.serving.vision_helpers import raw_image

LADDER = batch_ladder(16)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_repository(tmp_path_factory.mktemp("bound") / "repository")


def ladder_of(path: Path, bound: bool) -> FixedShapeBackend:
    def open_rung(rows: int) -> OnnxRuntimeBackend | BoundRung:
        backend = OnnxRuntimeBackend(path, CPU, BackendSettings(), 1)
        return BoundRung(backend, rows, CPU) if bound else backend

    return open_fixed_shapes(LADDER, open_rung)


def bound_rungs(backend: FixedShapeBackend) -> list[BoundRung]:
    rungs = [backend._rungs[rows] for rows in backend.ladder]
    assert all(isinstance(rung, BoundRung) for rung in rungs)
    return rungs  # type: ignore[return-value]


def buffer_addresses(rungs: list[BoundRung]) -> list[int]:
    """Where every rung's input and output buffers live: unchanged while they are reused."""
    inputs = [array.__array_interface__["data"][0] for rung in rungs for array in rung.staging.values()]
    return inputs + [value.data_ptr() for rung in rungs for value in rung.bound_outputs.values()]


def assert_bound_answers_as_unbound(path: Path, stream: tuple[int, ...]) -> None:
    """Every rung exactly, then `stream` (padded sizes after larger batches, whose rows must be zeroed):
    identical answers (the same sessions' arithmetic on the same zero-padded rows), buffers never
    reallocated, and an answer handed out is not overwritten by the batches after it."""
    bound, unbound = ladder_of(path, bound=True), ladder_of(path, bound=False)
    rungs = bound_rungs(bound)
    rng = np.random.default_rng(0)
    answers, addresses = [], None
    for index, items in enumerate((*LADDER, *stream)):
        feeds = random_feeds(unbound._rungs[1], items, rng)  # type: ignore[arg-type]
        answer, expected = bound.infer(feeds), unbound.infer(feeds)
        assert set(answer) == set(expected)
        for name, array in expected.items():
            assert answer[name].shape == array.shape, name  # the padding rows were dropped
            np.testing.assert_array_equal(answer[name], array, err_msg=f"{name}, batch of {items}")
        answers.append((answer, expected))
        if index == len(LADDER) - 1:  # every rung has run once: its inputs are bound
            addresses = buffer_addresses(rungs)
    assert addresses is not None and buffer_addresses(rungs) == addresses
    for answer, expected in answers:  # copies, not views of buffers later batches wrote
        for name, array in expected.items():
            np.testing.assert_array_equal(answer[name], array, err_msg=name)
    bound.close()
    unbound.close()


@pytest.mark.parametrize("model", ["tiny_classify", "tiny_detect", "tiny_caption_decoder", "tiny_generate"])
def test_bound_rungs_answer_exactly_as_unbound_ones_and_reuse_their_buffers(tiny_models: Path, model: str) -> None:
    assert_bound_answers_as_unbound(tiny_models / model / "1" / "model.onnx", MIXED_STREAM)


def test_a_trained_exported_graph_answers_the_same_bound(small_repository: Path) -> None:
    """resnet_small as exported (BatchNorm folded into the graph; rows do not interact in eval)."""
    assert_bound_answers_as_unbound(small_repository / "resnet_small" / "1" / "model.onnx", (3, 1, 16, 5, 2, 9))


def test_rows_a_larger_batch_left_behind_are_zeroed_before_a_smaller_one_runs(tiny_models: Path) -> None:
    path = tiny_models / "tiny_classify" / "1" / "model.onnx"
    rung = BoundRung(OnnxRuntimeBackend(path, CPU, BackendSettings(), 1), 8, CPU)
    full = np.full((8, 3, tiny.SIZE, tiny.SIZE), np.nan, np.float32)
    rung.infer({"images": full})
    assert np.isnan(rung.staging["images"]).all()
    images = np.ones((3, 3, tiny.SIZE, tiny.SIZE), np.float32)
    logits = rung.infer({"images": images})["logits"]
    assert logits.shape == (3, 4)
    np.testing.assert_allclose(logits, tiny_classifier_logits(images), rtol=1e-5, atol=1e-6)
    assert (rung.staging["images"][3:] == 0).all() and (rung.staging["images"][:3] == 1).all()
    with pytest.raises(ValueError, match="a batch of 9 does not fit the batch-8 session"):
        rung.infer({"images": np.ones((9, 3, tiny.SIZE, tiny.SIZE), np.float32)})
    rung.close()


def test_threads_sharing_one_bound_backend_never_mix_their_batches(tiny_models: Path) -> None:
    """The batcher calls a backend from one thread; anything else calling it too waits on the rung's lock
    rather than write into a buffer another run is reading."""
    backend = ladder_of(tiny_models / "tiny_classify" / "1" / "model.onnx", bound=True)
    rng = np.random.default_rng(2)
    batches = [rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32) for items in MIXED_STREAM * 6]

    def run(images: np.ndarray) -> np.ndarray:
        return backend.infer({"images": images})["logits"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        rung = backend._rungs[4]
        run(np.zeros((4, 3, tiny.SIZE, tiny.SIZE), np.float32))  # binds the batch-4 buffers
        with rung._lock:  # type: ignore[attr-defined]  # as if a run were in progress on the batch-4 rung
            waiting = pool.submit(run, batches[0][:3])
            assert not wait([waiting], timeout=0.5).done  # a broken lock lets it finish in microseconds
            assert (rung.staging["images"] == 0).all()  # type: ignore[attr-defined]  # and write meanwhile
        np.testing.assert_allclose(waiting.result(), tiny_classifier_logits(batches[0][:3]), rtol=1e-5, atol=1e-6)
        answers = list(pool.map(run, batches))
    for images, logits in zip(batches, answers, strict=True):
        np.testing.assert_allclose(logits, tiny_classifier_logits(images), rtol=1e-5, atol=1e-6)
    backend.close()


def test_two_instances_each_bind_their_own_buffers_and_a_concurrent_stream_answers_right(
    tiny_models: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    folder = repository / "tiny_classify"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes((tiny_models / "tiny_classify" / "1" / "model.onnx").read_bytes())
    (folder / "labels.txt").write_text((tiny_models / "tiny_classify" / "labels.txt").read_text())
    config = (tiny_models / "tiny_classify" / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config + "instance_group [ { kind: KIND_CPU count: 2 } ]\n")

    async def scenario() -> None:
        manager = ModelManager(repository, BackendSettings(fixed_shapes="all", io_binding="all"))
        await manager.load_all()
        model = manager.get("tiny_classify")
        first, second = (bound_rungs(backend) for backend in model._backends)  # type: ignore[arg-type]
        assert not set(map(id, first)) & set(map(id, second))
        assert len(buffer_addresses(first)) == 2 * len(first)  # warm-up ran every rung: one input, one output each
        assert not set(buffer_addresses(first)) & set(buffer_addresses(second))
        rng = np.random.default_rng(3)
        batches = [rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32) for items in MIXED_STREAM * 3]
        answers = await asyncio.gather(*(model.infer({"images": images}) for images in batches))
        for images, answer in zip(batches, answers, strict=True):
            np.testing.assert_allclose(answer["logits"], tiny_classifier_logits(images), rtol=1e-5, atol=1e-6)
        await manager.close()

    asyncio.run(scenario())


def test_the_batcher_decodes_deferred_rows_straight_into_the_rung_buffer(tiny_models: Path) -> None:
    """Deferred rows (decoded images) are written into the bound rung's input buffer, so the run needs no
    copy; a writer that fails leaves its request out and the others still answer right."""
    backend = ladder_of(tiny_models / "tiny_classify" / "1" / "model.onnx", bound=True)
    images = np.random.default_rng(5).random((4, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32)
    written: list[np.ndarray] = []
    release = threading.Event()

    def writer(image: np.ndarray, block: bool = False) -> RowWriter:
        def write(row: np.ndarray) -> None:
            if block:
                release.wait(30)
            row[...] = image
            written.append(row)

        return write

    def corrupt(row: np.ndarray) -> None:
        raise InvalidArgument("image 0 is not a JPEG")

    def deferred(*writers: RowWriter) -> dict[str, np.ndarray | DeferredRows]:
        return {"images": DeferredRows((3, tiny.SIZE, tiny.SIZE), np.dtype(np.float32), writers)}

    async def scenario() -> None:
        batcher = DynamicBatcher("tiny_classify", BatchPolicy(max_batch_size=16), [backend],
                                 ModelStatistics("tiny_classify", 1, ""), ladder=LADDER)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(deferred(writer(images[0], block=True)), 1))
        await asyncio.sleep(0.05)  # the instance picked it up and waits in its writer
        # a corrupt request then three good ones: one batch of 4 rows, run as the last 3
        failing = asyncio.ensure_future(batcher.submit(deferred(corrupt), 1))
        batched = [asyncio.ensure_future(batcher.submit(deferred(writer(image)), 1)) for image in images[1:]]
        await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(first, *batched)
        with pytest.raises(InvalidArgument, match="not a JPEG"):
            await failing
        for image, answer in zip(images, answers, strict=True):
            np.testing.assert_allclose(answer["logits"], tiny_classifier_logits(image[None]), rtol=1e-5, atol=1e-6)
        await batcher.close()

    asyncio.run(scenario())
    rung1, rung4 = backend._rungs[1], backend._rungs[4]
    assert len(written) == 4 and np.shares_memory(written[0], rung1.staging["images"])  # type: ignore[attr-defined]
    assert all(np.shares_memory(row, rung4.staging["images"]) for row in written[1:])  # type: ignore[attr-defined]
    backend.close()


def test_the_flag_chooses_the_instances_like_fixed_shapes_and_refuses_other_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert runs_io_binding(BackendSettings(), H100) and not runs_io_binding(BackendSettings(), CPU)
    assert runs_io_binding(BackendSettings(io_binding="all"), CPU)
    assert not runs_io_binding(BackendSettings(io_binding="off"), H100)
    base = ["--model-repository", "r"]
    assert load_config(base, env={}).backend_settings().io_binding == "gpu"
    assert load_config(base + ["--io-binding", "all"], env={}).backend_settings().io_binding == "all"
    assert load_config(base, env={"NINEFOLD_IO_BINDING": "off"}).backend_settings().io_binding == "off"
    with pytest.raises(SystemExit) as refused:
        load_config(base + ["--io-binding", "cpu"], env={})
    assert refused.value.code == 2 and "invalid choice: 'cpu'" in capsys.readouterr().err


def tiny_classify_request(images: np.ndarray) -> v2.ModelInferRequest:
    tensor = v2.ModelInferRequest.InferInputTensor(name="images", datatype="FP32", shape=list(images.shape))
    return v2.ModelInferRequest(model_name="tiny_classify", inputs=[tensor], raw_input_contents=[images.tobytes()])


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in rng.integers(0, 256, 3))
    return red, green, blue


def test_a_server_with_io_binding_everywhere_answers_a_concurrent_mixed_stream(tiny_models: Path) -> None:
    """Every tiny model loads bound (warm-up runs every rung); v2 tensors (copied into the rung buffer) and
    Classify images (decoded straight into it) answer as the graph computes."""
    server: ServerProcess = start_server(tiny_models, "--fixed-shapes", "all", "--io-binding", "all")
    try:
        rng = np.random.default_rng(4)
        batches = [rng.random((items, 3, tiny.SIZE, tiny.SIZE), dtype=np.float32) for items in MIXED_STREAM * 3]
        with grpc.insecure_channel(server.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            infer: Callable[..., grpc.Future] = stub.ModelInfer.future
            calls = [infer(tiny_classify_request(images), timeout=30) for images in batches]
            for images, call in zip(batches, calls, strict=True):
                response = call.result()
                logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)
                np.testing.assert_allclose(logits, tiny_classifier_logits(images), rtol=1e-5, atol=1e-6)
            vision = vision_pb2_grpc.VisionStub(channel)
            groups = [[random_colour(rng) for _ in range(n)] for n in (1, 3, 2, 3, 1, 3, 2)]
            calls = [vision.Classify.future(pb.ClassifyRequest(images=[raw_image(uniform(c)) for c in group], top_k=1),
                                            timeout=30) for group in groups]
            results = [result for call in calls for result in call.result().results]
            expected = [int(np.argmax(tiny_classifier_logits(normalised(c)))) for group in groups for c in group]
            assert [result.predictions[0].index for result in results] == expected
    finally:
        assert server.stop() == 0
