"""The Vision API end to end on a real server with tiny hand-checkable models (tests/serving/tiny_repository.py).

Every answer is checked against what the tiny graph computes; every bad input against its status
code and message; the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from clients.server_process import ServerProcess
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from serving.tasks.generate import latents_from_seed
from tests.protocols.repositories import CLASSIFIER_LABELS, tiny_classifier_logits
from tests.serving import tiny_repository as tiny
from tests.serving.vision_helpers import encoded_image, raw_image, vision_server, vision_stub

ServerFactory = Callable[..., ServerProcess]

MAX_PIXELS = 100 * 100
MAX_IMAGES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("tiny")
    repository = tiny.write_tiny_repository(folder / "repository")
    broken = repository / "tiny_broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    (broken.parent / "config.pbtxt").write_text(
        'name: "tiny_broken"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'parameters { key: "task" value { string_value: "classify" } }\n'
    )
    unusable = repository / "tiny_caption_without_vocabulary"
    shutil.copytree(repository / "tiny_caption", unusable)
    (unusable / "vocabulary.txt").unlink()
    config = (unusable / "config.pbtxt").read_text()
    (unusable / "config.pbtxt").write_text(config.replace('"tiny_caption"', f'"{unusable.name}"'))
    limits = ("--max-image-pixels", str(MAX_PIXELS), "--max-images-per-request", str(MAX_IMAGES),
              "--no-strict-readiness")  # the broken models beside the others would keep a strict one NOT_SERVING
    with vision_server(repository, *limits) as running:
        yield running


@pytest.fixture(scope="module")
def vision(server: ServerProcess) -> Iterator[vision_pb2_grpc.VisionStub]:
    with vision_stub(server) as stub:
        yield stub


def uniform(colour: tuple[int, int, int], height: int = 20, width: int = 30) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def normalised(colour: tuple[int, int, int]) -> np.ndarray:
    """The tiny models' preprocessing of a uniform image, as (1, 3, 8, 8)."""
    values = (np.array(colour, np.float32) / 255 - 0.5) / 0.25
    return np.broadcast_to(values[None, :, None, None], (1, 3, tiny.SIZE, tiny.SIZE))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def metric_samples(server: ServerProcess) -> list:
    return [sample for family in text_string_to_metric_families(server.metrics()) for sample in family.samples]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for sample in metric_samples(server)
        if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# ------------------------------------------------------------------ tasks


def test_classify_several_images_encoded_and_raw(vision: vision_pb2_grpc.VisionStub) -> None:
    colours = [(200, 30, 60), (10, 240, 100), (90, 90, 250)]
    images = [
        encoded_image(uniform(colours[0])), raw_image(uniform(colours[1], 8, 8)), raw_image(uniform(colours[2], 50, 40))
    ]
    response = vision.Classify(pb.ClassifyRequest(images=images, top_k=2), timeout=10)
    assert (response.model.name, response.model.version) == ("tiny_classify", 1)  # the default model
    assert len(response.results) == 3
    for colour, result in zip(colours, response.results, strict=True):
        logits = tiny_classifier_logits(normalised(colour))[0]
        probabilities = np.exp(logits) / np.exp(logits).sum()
        best = np.argsort(-probabilities)[:2]
        assert [p.index for p in result.predictions] == best.tolist()
        assert [p.label for p in result.predictions] == [CLASSIFIER_LABELS[i] for i in best]
        np.testing.assert_allclose([p.score for p in result.predictions], probabilities[best], rtol=1e-4)


def test_classify_top_k_defaults_to_five_capped_at_the_classes(vision: vision_pb2_grpc.VisionStub) -> None:
    named = pb.ModelRef(name="tiny_classify", version=1)
    response = vision.Classify(pb.ClassifyRequest(model=named, images=[encoded_image(uniform((1, 2, 3)))]), timeout=10)
    assert len(response.results[0].predictions) == len(CLASSIFIER_LABELS)


def test_detect_boxes_in_each_original_image(vision: vision_pb2_grpc.VisionStub) -> None:
    wide, tall = uniform((9, 9, 9), height=16, width=64), uniform((9, 9, 9), height=96, width=32)
    response = vision.Detect(pb.DetectRequest(images=[encoded_image(wide), raw_image(tall)]), timeout=10)
    first, second = response.results
    assert [(d.label, round(d.score, 3)) for d in first.detections] == [("square", 0.9)]  # 0.4 under 0.5
    box = first.detections[0].box
    assert (box.x1, box.y1, box.x2, box.y2) == (8.0, 4.0, 24.0, 8.0)  # x * 64/32, y * 16/32
    box = second.detections[0].box
    assert (box.x1, box.y1, box.x2, box.y2) == (4.0, 24.0, 12.0, 48.0)  # x * 1, y * 96/32
    low = vision.Detect(pb.DetectRequest(images=[encoded_image(wide)], score_threshold=0.3), timeout=10)
    assert [d.label for d in low.results[0].detections] == ["square", "triangle"]  # padding row never
    capped_request = pb.DetectRequest(images=[encoded_image(wide)], score_threshold=0.3, max_detections=1)
    capped = vision.Detect(capped_request, timeout=10)
    assert [d.score for d in capped.results[0].detections] == [pytest.approx(0.9)]


def test_caption_greedy_and_beam(vision: vision_pb2_grpc.VisionStub) -> None:
    grey = [encoded_image(uniform((128, 128, 128))), raw_image(uniform((128, 128, 128), 8, 8))]
    greedy = vision.Caption(pb.CaptionRequest(images=grey), timeout=10)
    assert [c.text for c in greedy.results] == ["red square", "red square"]
    assert greedy.results[0].log_probability == pytest.approx(np.log(0.6 * 0.7 * 0.8), abs=0.05)
    # One word at most: greedy commits to "red" (0.6 * end 0.2); beam search finds "square" (0.3 * end 0.8).
    short_greedy = vision.Caption(pb.CaptionRequest(images=grey[:1], max_length=1), timeout=10)
    short_beam = vision.Caption(pb.CaptionRequest(images=grey[:1], max_length=1, beam_size=3), timeout=10)
    assert short_greedy.results[0].text == "red" and short_beam.results[0].text == "square"
    assert short_beam.results[0].log_probability > short_greedy.results[0].log_probability


def test_generate_is_deterministic_and_matches_explicit_latents(vision: vision_pb2_grpc.VisionStub) -> None:
    seeded = vision.Generate(pb.GenerateRequest(count=3, seed=42), timeout=10)
    again = vision.Generate(pb.GenerateRequest(count=3, seed=42), timeout=10)
    other = vision.Generate(pb.GenerateRequest(count=3, seed=43), timeout=10)
    assert [i.png for i in seeded.images] == [i.png for i in again.images]
    assert [i.png for i in seeded.images] != [i.png for i in other.images]
    latents = latents_from_seed(42, 3, tiny.LATENT_SIZE)
    explicit = vision.Generate(
        pb.GenerateRequest(latents=[pb.Latent(values=row.tolist()) for row in latents]), timeout=10
    )
    assert [i.png for i in explicit.images] == [i.png for i in seeded.images]
    image = seeded.images[0]
    assert (image.height, image.width) == tiny.GENERATE_SHAPE[1:]
    assert decoded(image.png).shape == (*tiny.GENERATE_SHAPE[1:], 3)


def test_warp_returns_the_warped_image_theta_and_label(vision: vision_pb2_grpc.VisionStub) -> None:
    picture = np.random.default_rng(5).integers(0, 256, (tiny.SIZE, tiny.SIZE, 3), dtype=np.uint8)
    images = [raw_image(picture), encoded_image(uniform((200, 30, 60)))]
    response = vision.Warp(pb.WarpRequest(images=images), timeout=10)
    first, second = response.results
    np.testing.assert_array_equal(decoded(first.png), picture)  # the tiny warp is the identity
    assert list(first.theta) == pytest.approx(tiny.WARP_THETA)
    logits = tiny_classifier_logits(normalised((200, 30, 60)))[0]
    assert second.label == CLASSIFIER_LABELS[int(np.argmax(logits))]
    assert second.score == pytest.approx(np.exp(logits.max()) / np.exp(logits).sum(), rel=1e-4)


def test_explain_returns_ranked_channels_with_their_receptive_fields(vision: vision_pb2_grpc.VisionStub) -> None:
    """tiny_explain: rank r -> channel r, activation 10 - r, position (r, r), projection = input x activation."""
    picture = np.random.default_rng(6).integers(0, 256, (tiny.SIZE, tiny.SIZE, 3), dtype=np.uint8)
    response = vision.Explain(pb.ExplainRequest(images=[raw_image(picture)] * 2, layer="1", top_k=3), timeout=10)
    assert response.model.name == "tiny_explain" and len(response.results) == 2
    conv1 = tiny.EXPLAIN_LAYERS[0]
    for result in response.results:
        assert result.layer == "conv1"
        assert [(c.channel, c.activation) for c in result.channels] == [(0, 10.0), (1, 9.0), (2, 8.0)]
        for rank, channel in enumerate(result.channels):
            start = rank * conv1["stride"] + conv1["offset"]
            box = channel.receptive_field
            assert (box.x1, box.y1, box.x2, box.y2) == (start, start, start + conv1["size"], start + conv1["size"])
            # Scaled by its own largest magnitude: the same picture whatever the activation.
            model_input = (picture.astype(np.float32) / 255 - 0.5) / 0.25
            expected = np.rint((model_input / np.abs(model_input).max() + 1) * 127.5)
            assert np.abs(decoded(channel.png).astype(int) - expected).max() <= 1
    default = vision.Explain(pb.ExplainRequest(images=[raw_image(picture)]), timeout=10).results[0]
    assert default.layer == "conv2" and len(default.channels) == 2  # the last layer; 9 capped at its 2 channels
    assert not default.HasField("explained_class") and [c.contribution for c in default.channels] == [0.0, 0.0]
    request = pb.ExplainRequest(images=[raw_image(picture)], top_k=2, class_label=CLASSIFIER_LABELS[2])
    by_class = vision.Explain(request, timeout=10).results[0]
    assert [c.contribution for c in by_class.channels] == [2.0, 2.0]  # the class the server sent, every row
    explained = by_class.explained_class
    assert (explained.label, explained.index) == (CLASSIFIER_LABELS[2], 2)
    assert explained.score == pytest.approx(1 / len(CLASSIFIER_LABELS))


def test_list_models(vision: vision_pb2_grpc.VisionStub) -> None:
    models = {m.name: m for m in vision.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"tiny_classify", "tiny_detect", "tiny_caption", "tiny_caption_decoder",
                           "tiny_generate", "tiny_warp", "tiny_explain", "tiny_broken",
                           "tiny_caption_without_vocabulary"}
    assert not models["tiny_broken"].ready and models["tiny_broken"].state_reason
    assert models["tiny_classify"].is_default and models["tiny_classify"].ready
    assert list(models["tiny_classify"].labels) == list(CLASSIFIER_LABELS)
    assert not models["tiny_caption_decoder"].is_default
    assert (models["tiny_warp"].max_batch_size, models["tiny_warp"].instances) == (16, 1)
    only = vision.ListModels(pb.ListModelsRequest(task="detect"), timeout=10).models
    assert [m.name for m in only] == ["tiny_detect"]


# ------------------------------------------------------------------ errors


def test_unknown_model_and_version(vision: vision_pb2_grpc.VisionStub) -> None:
    image = [encoded_image(uniform((1, 2, 3)))]
    error = rpc_error(vision.Classify, pb.ClassifyRequest(model=pb.ModelRef(name="nope"), images=image))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in error.details()
    error = rpc_error(vision.Classify, pb.ClassifyRequest(model=pb.ModelRef(name="tiny_classify", version=7),
                                                          images=image))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "version 7" in error.details()


def test_a_model_that_failed_to_load_is_unavailable_while_the_others_serve(vision) -> None:
    image = [encoded_image(uniform((1, 2, 3)))]
    error = rpc_error(vision.Classify, pb.ClassifyRequest(model=pb.ModelRef(name="tiny_broken"), images=image))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "tiny_broken" in error.details()
    assert vision.Classify(pb.ClassifyRequest(images=image), timeout=10).model.name == "tiny_classify"


def test_a_model_with_unusable_task_parameters_says_why(vision) -> None:
    request = pb.CaptionRequest(model=pb.ModelRef(name="tiny_caption_without_vocabulary"),
                                images=[encoded_image(uniform((1, 2, 3)))])
    error = rpc_error(vision.Caption, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == (
        "model 'tiny_caption_without_vocabulary': vocabulary 'vocabulary.txt' is not a file in its folder"
    )


def test_model_of_another_task(vision: vision_pb2_grpc.VisionStub) -> None:
    error = rpc_error(vision.Classify, pb.ClassifyRequest(model=pb.ModelRef(name="tiny_detect"),
                                                          images=[encoded_image(uniform((1, 2, 3)))]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "model 'tiny_detect' serves task 'detect', not 'classify'"


def test_bad_image_bytes_name_the_image(vision: vision_pb2_grpc.VisionStub) -> None:
    images = [encoded_image(uniform((1, 2, 3))), pb.Image(encoded=b"definitely not a picture")]
    error = rpc_error(vision.Detect, pb.DetectRequest(images=images))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("image 1: not a readable JPEG, PNG or WebP image")


def test_raw_shape_mismatch_and_empty_image(vision: vision_pb2_grpc.VisionStub) -> None:
    short = pb.Image(raw=pb.RawImage(pixels=b"\0" * 10, height=4, width=4, channels=3))
    error = rpc_error(vision.Warp, pb.WarpRequest(images=[short]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "image 0: raw image of 4x4x3 needs 48 bytes, got 10"
    error = rpc_error(vision.Caption, pb.CaptionRequest(images=[encoded_image(uniform((1, 2, 3))), pb.Image()]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("image 1: empty")
    error = rpc_error(vision.Classify, pb.ClassifyRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no images" in error.details()


def test_limits(vision: vision_pb2_grpc.VisionStub) -> None:
    too_many = [raw_image(uniform((1, 2, 3), 8, 8))] * (MAX_IMAGES + 1)
    error = rpc_error(vision.Classify, pb.ClassifyRequest(images=too_many))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == f"{MAX_IMAGES + 1} images in one request; the limit is {MAX_IMAGES}, split the request"
    error = rpc_error(vision.Classify, pb.ClassifyRequest(images=[encoded_image(uniform((1, 2, 3), 101, 100))]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith(f"image 0: 100x101 = 10100 pixels exceeds the limit of {MAX_PIXELS}")
    error = rpc_error(vision.Generate, pb.GenerateRequest(count=MAX_IMAGES + 1))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_out_of_range_options(vision: vision_pb2_grpc.VisionStub) -> None:
    image = [encoded_image(uniform((1, 2, 3)))]
    error = rpc_error(vision.Caption, pb.CaptionRequest(images=image, beam_size=1000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "beam_size 1000" in error.details()
    error = rpc_error(vision.Caption, pb.CaptionRequest(images=image, max_length=99))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"max_length 99 is over this model's trained maximum of {tiny.CAPTION_MAX_LENGTH}"
    error = rpc_error(vision.Detect, pb.DetectRequest(images=image, score_threshold=1.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(vision.Generate, pb.GenerateRequest(latents=[pb.Latent(values=[1.0, 2.0])]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"latent 0 has 2 values; this model takes exactly {tiny.LATENT_SIZE}"


def test_failures_and_successes_are_counted_per_model(server: ServerProcess, vision) -> None:
    labels = {"model": "tiny_warp", "version": "1"}
    before_ok = metric(server, "nv_inference_request_success", **labels)
    before_bad = metric(server, "nv_inference_request_failure", reason="invalid_argument", **labels)
    vision.Warp(pb.WarpRequest(images=[encoded_image(uniform((1, 2, 3)))]), timeout=10)
    rpc_error(vision.Warp, pb.WarpRequest(images=[pb.Image(encoded=b"junk")]))
    assert metric(server, "nv_inference_request_success", **labels) == before_ok + 1
    assert metric(server, "nv_inference_request_failure", reason="invalid_argument", **labels) == before_bad + 1
    wrong_task = {"model": "tiny_detect", "version": "1", "reason": "failed_precondition"}
    before = metric(server, "nv_inference_request_failure", **wrong_task)
    image = [encoded_image(uniform((1, 2, 3)))]
    rpc_error(vision.Warp, pb.WarpRequest(model=pb.ModelRef(name="tiny_detect"), images=image))
    assert metric(server, "nv_inference_request_failure", **wrong_task) == before + 1


def test_concurrent_caption_steps_are_batched(server: ServerProcess) -> None:
    """Greedy captions of one image submit one row per step, so any decoder batch larger than one
    row holds the steps of different requests."""
    labels = {"model": "tiny_caption_decoder", "version": "1"}
    rows_before = metric(server, "nv_inference_count", **labels)
    executions_before = metric(server, "nv_inference_exec_count", **labels)

    async def caption_many() -> list[pb.CaptionResponse]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = vision_pb2_grpc.VisionStub(channel)
            request = pb.CaptionRequest(images=[raw_image(uniform((128, 128, 128), 8, 8))])
            return await asyncio.gather(*(stub.Caption(request, timeout=30) for _ in range(32)))

    responses = asyncio.run(caption_many())
    assert {r.results[0].text for r in responses} == {"red square"}
    rows = metric(server, "nv_inference_count", **labels) - rows_before
    executions = metric(server, "nv_inference_exec_count", **labels) - executions_before
    assert rows == 32 * 3  # "red", "square", end for each request
    assert executions < rows  # some executions ran steps of several requests together


def test_server_still_serves_after_errors(vision: vision_pb2_grpc.VisionStub) -> None:
    assert vision.Classify(pb.ClassifyRequest(images=[encoded_image(uniform((1, 2, 3)))]), timeout=10).results


def test_a_caption_whose_decoding_fails_is_one_failed_captioner_request(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    """The encoder pass succeeds, the second decoder step fails: the request counts as failed on the
    captioner (not as the encoder's success), and the decoder counts its own failed step."""
    repository = tiny.write_tiny_repository(tmp_path / "repository")
    decoder_path = repository / "tiny_caption_decoder" / "1" / "model.onnx"
    decoder = onnx.load(str(decoder_path))
    table = next(tensor for tensor in decoder.graph.initializer if tensor.name == "table")
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table)[:2], "table"))  # token 2 falls off it
    onnx.save(decoder, str(decoder_path))
    server = server_factory(repository)
    with vision_stub(server) as stub:
        request = pb.CaptionRequest(images=[raw_image(uniform((128, 128, 128), 8, 8))])  # greedy: "red" = token 2
        assert rpc_error(stub.Caption, request).code() == grpc.StatusCode.INTERNAL
    captioner = {"model": "tiny_caption", "version": "1"}
    assert metric(server, "nv_inference_request_success", **captioner) == 0
    assert metric(server, "nv_inference_request_failure", **captioner) == 1
    decoder_labels = {"model": "tiny_caption_decoder", "version": "1"}
    assert metric(server, "nv_inference_request_success", **decoder_labels) == 1  # the first step
    assert metric(server, "nv_inference_request_failure", **decoder_labels) == 1
