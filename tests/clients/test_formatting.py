"""The CLI's printed records: exact JSON keys per task, shortest float32 numbers, readable lines."""

from __future__ import annotations

import json

import numpy as np

from clients import formatting
from clients.results import (
    Answer,
    Caption,
    Classification,
    Detection,
    Detections,
    GeneratedImage,
    ModelId,
    ModelInfo,
    Prediction,
    Warp,
)

MODEL = ModelId("some_small", 1)
POINT_NINE = float(np.float32(0.9))  # what a float32 field from the wire looks like in Python


def test_classify_json_shape_and_float32_digits() -> None:
    answer = Answer(MODEL, (Classification((Prediction("circle", 0, POINT_NINE), Prediction("star", 2, 0.05))),))
    output = formatting.classification("a.png", answer)
    assert output.json == {
        "model": "some_small",
        "predictions": [{"label": "circle", "score": 0.9}, {"label": "star", "score": 0.05}],
    }
    assert json.loads(json.dumps(output.json)) == output.json
    assert output.text.startswith("a.png: circle 0.900, star 0.050")


def test_detect_json_shape_and_empty_result() -> None:
    found = Detections((Detection("square", 1, POINT_NINE, (1.0, 2.5, 30.0, 40.0)),))
    output = formatting.detections("b.png", Answer(MODEL, (found,)))
    assert output.json == {
        "model": "some_small",
        "detections": [{"label": "square", "score": 0.9, "box": [1.0, 2.5, 30.0, 40.0]}],
    }
    empty = formatting.detections("b.png", Answer(MODEL, (Detections(()),)))
    assert empty.json == {"model": "some_small", "detections": []}
    assert "no detections" in empty.text


def test_caption_warp_generate_json_shapes() -> None:
    caption = formatting.caption("c.png", Answer(MODEL, (Caption("a red circle", -1.5),)))
    assert caption.json == {"model": "some_small", "caption": "a red circle"}
    warp = Warp(b"png", ((1.0, 0.0, 0.25), (0.0, POINT_NINE, 0.0)), "circle", 0.5)
    warped = formatting.warp("d.png", Answer(MODEL, (warp,)), "out/d_warped.png")
    assert warped.json == {
        "model": "some_small",
        "transform": "affine",
        "theta": [[1.0, 0.0, 0.25], [0.0, 0.9, 0.0]],
        "image_path": "out/d_warped.png",
    }
    tps = Warp(b"png", tuple((x, y) for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)), "", 0.0, "tps")
    assert "tps theta [-1.000 -1.000; +0.000 -1.000" in formatting.warp("e.png", Answer(MODEL, (tps,)), "e.png").text
    images = Answer(MODEL, (GeneratedImage(b"p", 8, 8), GeneratedImage(b"q", 8, 8)))
    generated = formatting.generated(images, ["o/1.png", "o/2.png"])
    assert generated.json == {"model": "some_small", "image_paths": ["o/1.png", "o/2.png"]}
    assert generated.text.splitlines() == ["o/1.png (some_small v1)", "o/2.png (some_small v1)"]


def test_models_table_has_a_row_per_model_and_says_why_not_ready() -> None:
    infos = [
        ModelInfo("resnet_small", 1, "classify", "resnet", True, "", True, 32, 1, ("circle",)),
        ModelInfo("broken_small", 1, "detect", "faster_rcnn", False, "model.onnx missing", False, 8, 0, ()),
    ]
    output = formatting.models(infos)
    lines = output.text.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "VERSION", "TASK"]
    assert "resnet_small" in lines[1] and "yes" in lines[1]
    assert "not ready: model.onnx missing" in lines[2]
    assert output.json["models"][1]["state_reason"] == "model.onnx missing"
    assert json.loads(json.dumps(output.json))["models"][0]["labels"] == ["circle"]
