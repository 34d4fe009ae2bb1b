"""Requests built from a caller's arguments, and responses read back into typed results."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from clients import calls
from clients.errors import ClientError, InputError, VisionError
from clients.results import (
    Answer,
    Caption,
    ChannelProjection,
    Classification,
    Detection,
    Explanation,
    ModelId,
    Prediction,
    Warp,
)
from protos.ninefold.v1 import vision_pb2


def test_classify_request_carries_model_version_top_k_and_every_image() -> None:
    call = calls.classify([b"a", b"b"], model="resnet_small", version=2, top_k=3)
    assert call.method == "Classify"
    assert call.request.model == vision_pb2.ModelRef(name="resnet_small", version=2)
    assert call.request.top_k == 3
    assert [image.encoded for image in call.request.images] == [b"a", b"b"]


def test_classify_response_becomes_typed_answer_in_order() -> None:
    response = vision_pb2.ClassifyResponse(
        model=vision_pb2.ModelRef(name="vgg_small", version=1),
        results=[
            vision_pb2.Classification(predictions=[vision_pb2.Prediction(label="circle", index=0, score=0.75)]),
            vision_pb2.Classification(predictions=[vision_pb2.Prediction(label="square", index=1, score=0.5)]),
        ],
    )
    answer = calls.classify(b"x").parse(response)
    assert answer == Answer(
        model=ModelId("vgg_small", 1),
        results=(
            Classification((Prediction("circle", 0, 0.75),)),
            Classification((Prediction("square", 1, 0.5),)),
        ),
    )


def test_detect_boxes_become_x1_y1_x2_y2_tuples() -> None:
    box = vision_pb2.Box(x1=1.5, y1=2.0, x2=10.0, y2=12.25)
    response = vision_pb2.DetectResponse(
        results=[vision_pb2.Detections(detections=[vision_pb2.Detection(label="star", index=3, score=0.5, box=box)])]
    )
    call = calls.detect(b"x", score_threshold=0.25, max_detections=7)
    assert (call.request.score_threshold, call.request.max_detections) == (0.25, 7)
    (result,) = call.parse(response).results
    assert result.detections == (Detection("star", 3, 0.5, (1.5, 2.0, 10.0, 12.25)),)


def test_caption_and_warp_results() -> None:
    caption = calls.caption(b"x", beam_size=3, max_length=9)
    assert (caption.request.beam_size, caption.request.max_length) == (3, 9)
    parsed = caption.parse(vision_pb2.CaptionResponse(results=[vision_pb2.Caption(text="a red circle")]))
    assert parsed.results == (Caption("a red circle", 0.0),)
    warp = calls.warp(b"x").parse(
        vision_pb2.WarpResponse(
            results=[vision_pb2.Warp(png=b"png", theta=[1, 0, 0.5, 0, 1, -0.5], label="circle", score=0.5)]
        )
    )
    assert warp.results == (Warp(b"png", ((1.0, 0.0, 0.5), (0.0, 1.0, -0.5)), "circle", 0.5),)


def test_explain_request_names_the_layer_and_its_answer_reads_back() -> None:
    call = calls.explain(b"x", layer=2, top_k=4)
    assert (call.method, call.request.layer, call.request.top_k) == ("Explain", "2", 4)
    assert calls.explain(b"x", layer="conv3").request.layer == "conv3"
    box = vision_pb2.Box(x1=0.0, y1=4.0, x2=11.0, y2=15.0)
    response = vision_pb2.ExplainResponse(
        results=[
            vision_pb2.Explanation(
                layer="conv2",
                channels=[vision_pb2.ChannelProjection(channel=17, activation=2.5, png=b"p", receptive_field=box)],
            )
        ]
    )
    (result,) = call.parse(response).results
    assert result == Explanation("conv2", (ChannelProjection(17, 2.5, b"p", (0.0, 4.0, 11.0, 15.0), 0.0),), None)
    assert call.request.WhichOneof("explained_class") is None  # no class: the strongest channels


def test_explain_by_class_sends_a_label_or_an_index_and_reads_the_class_back() -> None:
    assert calls.explain(b"x", explained_class="star").request.class_label == "star"
    by_index = calls.explain(b"x", explained_class=3).request
    assert by_index.WhichOneof("explained_class") == "class_index" and by_index.class_index == 3
    with pytest.raises(InputError, match="explained_class"):
        calls.explain(b"x", explained_class=-1)
    response = vision_pb2.ExplainResponse(
        results=[
            vision_pb2.Explanation(
                layer="conv5",
                channels=[vision_pb2.ChannelProjection(channel=4, activation=1.5, png=b"p", contribution=0.75)],
                explained_class=vision_pb2.Prediction(label="star", index=3, score=0.5),
            )
        ]
    )
    (result,) = calls.explain(b"x", explained_class="star").parse(response).results
    assert result.explained_class == Prediction("star", 3, 0.5) and result.channels[0].contribution == 0.75


def test_projective_and_tps_thetas_come_back_as_rows() -> None:
    homography = vision_pb2.Warp(theta=[1, 0, 0, 0, 1, 0, 0.1, 0, 1], transform="projective")
    tps = vision_pb2.Warp(theta=list(range(18)), transform="tps")
    answer = calls.warp(b"x").parse(vision_pb2.WarpResponse(results=[homography, tps]))
    assert [r.transform for r in answer.results] == ["projective", "tps"]
    assert answer.results[0].theta[2] == (pytest.approx(0.1), 0.0, 1.0)
    assert answer.results[1].theta == tuple((float(i), float(i + 1)) for i in range(0, 18, 2))


@pytest.mark.parametrize(
    ("theta", "transform", "expected"), [([1, 0, 0], "", "6"), ([1] * 6, "projective", "9"), ([1] * 7, "tps", "K x 2")]
)
def test_warp_with_a_theta_of_the_wrong_size_is_a_client_error(theta, transform: str, expected: str) -> None:
    with pytest.raises(ClientError, match=expected):
        calls.warp(b"x").parse(vision_pb2.WarpResponse(results=[vision_pb2.Warp(theta=theta, transform=transform)]))


def test_unknown_transform_is_a_client_error() -> None:
    with pytest.raises(ClientError, match="unknown transform 'spline'"):
        calls.warp(b"x").parse(vision_pb2.WarpResponse(results=[vision_pb2.Warp(theta=[1] * 6, transform="spline")]))


def test_classify_sends_crops_and_refuses_negative_ones() -> None:
    assert calls.classify(b"x", crops=10).request.crops == 10
    with pytest.raises(InputError, match="crops"):
        calls.classify(b"x", crops=-1)


def test_generate_by_seed_or_by_latent_rows() -> None:
    by_seed = calls.generate(count=4, seed=7)
    assert (by_seed.request.count, by_seed.request.seed, len(by_seed.request.latents)) == (4, 7, 0)
    latents = np.arange(6, dtype=np.float32).reshape(2, 3)
    by_latents = calls.generate(latents=latents)
    assert [list(z.values) for z in by_latents.request.latents] == [[0, 1, 2], [3, 4, 5]]
    answer = by_seed.parse(
        vision_pb2.GenerateResponse(images=[vision_pb2.GeneratedImage(png=b"p", height=32, width=32)] * 4)
    )
    assert len(answer.results) == 4 and answer.results[0].height == 32


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: calls.classify(b"x", top_k=-1), "top_k"),
        (lambda: calls.classify(b"x", version=-1), "version"),
        (lambda: calls.detect(b"x", score_threshold=1.5), r"score_threshold must be in \[0, 1\]"),
        (lambda: calls.caption(b"x", beam_size=-2), "beam_size"),
        (lambda: calls.generate(seed=-1), "seed"),
        (lambda: calls.generate(count=2**32), "count"),
    ],
)
def test_out_of_range_options_are_input_errors(build, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        build()


def test_vision_error_is_one_line_with_code_and_message() -> None:
    error = VisionError(grpc.StatusCode.NOT_FOUND, "unknown model 'x'\n  known: a, b")
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert str(error) == "NOT_FOUND: unknown model 'x' known: a, b"
