"""A repository of tiny real ONNX graphs, one per task, that follows docs/MODEL_REPOSITORY.md.

Built in milliseconds, so the Vision servicer's tests need not wait for the trained small
families. Every graph computes something simple enough to check answers by hand:

- tiny_classify (tests.protocols.repositories): logits = mean colour @ weights.
- tiny_detect: the same DETECTIONS for every image, in a 32x32 input grid, 2 of K = 3 rows real
  (the padding row scores 0.99, so only num_detections can drop it).
- tiny_caption / tiny_caption_decoder: encoder h = mean colour @ weights; the decoder is a Markov
  chain over CAPTION_VOCABULARY biased by h.
- tiny_generate: images = tanh(z @ weights), 3 x 4 x 4.
- tiny_warp: warped = the input, theta = WARP_THETA, logits = mean colour @ weights.
- tiny_explain: for rank r, channel = r, activation = 10 - r, position = (r, r), projection = the input
  x activation, over the two layers of EXPLAIN_LAYERS; contribution = the class input, logits = activation
  for every one of CLASSIFIER_LABELS (so each class has probability 1 / 4).

`write_tiny_aligner` (not in the default set, whose model list other tests pin) adds tiny_align /
tiny_align_sentence: regions = mean colour @ weights, words = a table lookup per token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.protocols.repositories import CLASSIFIER_LABELS, CLASSIFIER_WEIGHTS, write_tiny_classifier

OPSET = 18
SIZE = 8
DETECT_SIZE = 32
PREPROCESSING = {"size": [SIZE, SIZE], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
#: Rows of every image's detections in the 32x32 input grid: box, score, label; the last is padding.
DETECTIONS = (((4.0, 8.0, 12.0, 16.0), 0.9, 1), ((0.0, 0.0, 32.0, 32.0), 0.4, 2), ((1.0, 1.0, 2.0, 2.0), 0.99, 0))
DETECT_LABELS = ("circle", "square", "triangle")
CAPTION_VOCABULARY = ("<start>", "<end>", "red", "square")
CAPTION_MAX_LENGTH = 4
LATENT_SIZE = 5
GENERATE_SHAPE = (3, 4, 4)
WARP_THETA = (1.0, 0.0, 0.25, 0.0, 1.0, -0.25)
#: Words every synthetic caption has ("a red star on a striped background"), so any scene's caption aligns.
ALIGN_VOCABULARY = ("<pad>", "a", "on", "background", "red", "square")
ALIGN_REGIONS = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5))
ALIGN_MAX_WORDS = 8
EXPLAIN_LAYERS = (
    {"name": "conv1", "channels": 4, "side": 4, "stride": 2, "offset": 0, "size": 2},
    {"name": "conv2", "channels": 2, "side": 2, "stride": 4, "offset": -1, "size": 6},
)


def write_tiny_repository(repository: Path) -> Path:
    """Write every tiny task model into `repository` and return it."""
    write_tiny_classifier(repository, "tiny_classify", SIZE)
    _write_detector(repository)
    _write_captioner(repository)
    _write_generator(repository)
    _write_warper(repository)
    _write_explainer(repository)
    return repository


def _config(
    name: str,
    task: str,
    inputs: list[tuple[str, str, tuple[int, ...]]],
    outputs: list[tuple[str, str, tuple[int, ...]]],
    parameters: dict[str, str],
    labelled: str = "",
) -> str:
    def tensors(specs: list[tuple[str, str, tuple[int, ...]]]) -> str:
        return ", ".join(
            f'{{ name: "{n}" data_type: {t} dims: [ {", ".join(map(str, d))} ]'
            + (' label_filename: "labels.txt"' if n == labelled else "")
            + " }"
            for n, t, d in specs
        )

    escaped = {key: value.replace('"', '\\"') for key, value in {"task": task, **parameters}.items()}
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 16\n'
        f"input [ {tensors(inputs)} ]\noutput [ {tensors(outputs)} ]\n"
        "dynamic_batching { }\n"
        + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in escaped.items())
    )


def _save(repository: Path, name: str, graph: onnx.GraphProto, config: str) -> Path:
    folder = repository / name
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(config)
    return folder


def _preprocessing() -> str:
    return json.dumps(PREPROCESSING)


def _value(name: str, dtype: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _batch_zero_nodes(source: str, rank: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and their constants) computing `zero` [B, 1, ...] of `rank` dims from the 4-D `source`,
    to broadcast constant outputs over the batch."""
    return [
        helper.make_node("ReduceMean", [source, "zero_axes"], ["batch_mean"], keepdims=1),
        helper.make_node("Mul", ["batch_mean", "zero_scalar"], ["zero4"]),
        helper.make_node("Reshape", ["zero4", "zero_shape"], ["zero"]),
    ], [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "zero_axes"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_scalar"),
        numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64), "zero_shape"),
    ]


def _write_detector(repository: Path) -> None:
    boxes = np.array([row[0] for row in DETECTIONS], np.float32)
    scores = np.array([row[1] for row in DETECTIONS], np.float32)  # the padding row scores high on purpose
    labels = np.array([row[2] for row in DETECTIONS], np.int64)
    nodes, constants = _batch_zero_nodes("images", 3)
    nodes += [
        helper.make_node("Add", ["zero", "box_rows"], ["boxes"]),
        helper.make_node("Reshape", ["zero", "two_d"], ["zero2"]),
        helper.make_node("Add", ["zero2", "score_rows"], ["scores"]),
        helper.make_node("Cast", ["zero2"], ["zero_int"], to=TensorProto.INT64),
        helper.make_node("Add", ["zero_int", "label_rows"], ["labels"]),
        helper.make_node("Add", ["zero_int", "count"], ["num_detections"]),
    ]
    constants += [
        numpy_helper.from_array(boxes, "box_rows"),
        numpy_helper.from_array(scores, "score_rows"),
        numpy_helper.from_array(labels, "label_rows"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "two_d"),
        numpy_helper.from_array(np.array([2], np.int64), "count"),
    ]
    k = len(DETECTIONS)
    graph = helper.make_graph(
        nodes,
        "tiny_detect",
        [_value("images", TensorProto.FLOAT, ["B", 3, DETECT_SIZE, DETECT_SIZE])],
        [_value("boxes", TensorProto.FLOAT, ["B", k, 4]), _value("scores", TensorProto.FLOAT, ["B", k]),
         _value("labels", TensorProto.INT64, ["B", k]), _value("num_detections", TensorProto.INT64, ["B", 1])],
        constants,
    )
    preprocessing = _preprocessing().replace(f"[{SIZE}, {SIZE}]", f"[{DETECT_SIZE}, {DETECT_SIZE}]")
    config = _config(
        "tiny_detect", "detect",
        [("images", "TYPE_FP32", (3, DETECT_SIZE, DETECT_SIZE))],
        [("boxes", "TYPE_FP32", (k, 4)), ("scores", "TYPE_FP32", (k,)), ("labels", "TYPE_INT64", (k,)),
         ("num_detections", "TYPE_INT64", (1,))],
        {"preprocessing": preprocessing},
        labelled="labels",
    )
    folder = _save(repository, "tiny_detect", graph, config)
    (folder / "labels.txt").write_text("\n".join(DETECT_LABELS) + "\n")


def _write_captioner(repository: Path) -> None:
    state = 2
    encoder = helper.make_graph(
        [helper.make_node("ReduceMean", ["images", "axes"], ["colour"], keepdims=0),
         helper.make_node("MatMul", ["colour", "project"], ["h"]),
         helper.make_node("Mul", ["h", "zero"], ["c"])],
        "tiny_caption",
        [_value("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [_value("h", TensorProto.FLOAT, ["B", state]), _value("c", TensorProto.FLOAT, ["B", state])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32), "project"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    config = _config(
        "tiny_caption", "caption",
        [("images", "TYPE_FP32", (3, SIZE, SIZE))],
        [("h", "TYPE_FP32", (state,)), ("c", "TYPE_FP32", (state,))],
        {"preprocessing": _preprocessing(), "decoder_model": "tiny_caption_decoder", "vocabulary": "vocabulary.txt",
         "start_token": "0", "end_token": "1", "max_length": str(CAPTION_MAX_LENGTH)},
    )
    folder = _save(repository, "tiny_caption", encoder, config)
    (folder / "vocabulary.txt").write_text("\n".join(CAPTION_VOCABULARY) + "\n")
    # P(next | token): "red" then "square" then the end, unless h pushes elsewhere.
    probabilities = np.array(
        [[1e-6, 0.1, 0.6, 0.3], [1e-6, 1.0, 1e-6, 1e-6], [1e-6, 0.2, 0.1, 0.7], [1e-6, 0.8, 0.1, 0.1]]
    )
    table = np.log(probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)
    decoder = helper.make_graph(
        [helper.make_node("Squeeze", ["token", "squeeze_axis"], ["flat"]),
         helper.make_node("Gather", ["table", "flat"], ["rows"]),
         helper.make_node("MatMul", ["h", "bias"], ["shift"]),
         helper.make_node("Add", ["rows", "shift"], ["scores"]),
         helper.make_node("LogSoftmax", ["scores"], ["logprobs"], axis=1),
         helper.make_node("Identity", ["h"], ["h_out"]),
         helper.make_node("Identity", ["c"], ["c_out"])],
        "tiny_caption_decoder",
        [_value("token", TensorProto.INT64, ["B", 1]), _value("h", TensorProto.FLOAT, ["B", state]),
         _value("c", TensorProto.FLOAT, ["B", state])],
        [_value("logprobs", TensorProto.FLOAT, ["B", len(CAPTION_VOCABULARY)]),
         _value("h_out", TensorProto.FLOAT, ["B", state]), _value("c_out", TensorProto.FLOAT, ["B", state])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([[0, 0, 0, 0], [0, 0, -2, 2]], np.float32), "bias"),
         numpy_helper.from_array(np.array([1], np.int64), "squeeze_axis")],
    )
    _save(repository, "tiny_caption_decoder", decoder, _config(
        "tiny_caption_decoder", "caption_decoder",
        [("token", "TYPE_INT64", (1,)), ("h", "TYPE_FP32", (state,)), ("c", "TYPE_FP32", (state,))],
        [("logprobs", "TYPE_FP32", (len(CAPTION_VOCABULARY),)), ("h_out", "TYPE_FP32", (state,)),
         ("c_out", "TYPE_FP32", (state,))],
        {"input_ranges": json.dumps({"token": [0, len(CAPTION_VOCABULARY) - 1]})},
    ))


def _write_generator(repository: Path) -> None:
    pixels = int(np.prod(GENERATE_SHAPE))
    weights = np.random.default_rng(0).standard_normal((LATENT_SIZE, pixels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "weights"], ["flat"]),
         helper.make_node("Tanh", ["flat"], ["flat_tanh"]),
         helper.make_node("Reshape", ["flat_tanh", "shape"], ["images"])],
        "tiny_generate",
        [_value("z", TensorProto.FLOAT, ["B", LATENT_SIZE])],
        [_value("images", TensorProto.FLOAT, ["B", *GENERATE_SHAPE])],
        [numpy_helper.from_array(weights, "weights"),
         numpy_helper.from_array(np.array([-1, *GENERATE_SHAPE], np.int64), "shape")],
    )
    _save(repository, "tiny_generate", graph, _config(
        "tiny_generate", "generate",
        [("z", "TYPE_FP32", (LATENT_SIZE,))],
        [("images", "TYPE_FP32", GENERATE_SHAPE)],
        {"output_range": "[-1, 1]"},
    ))


def _write_warper(repository: Path) -> None:
    nodes, constants = _batch_zero_nodes("images", 3)
    nodes += [
        helper.make_node("Identity", ["images"], ["warped"]),
        helper.make_node("Add", ["zero", "theta_rows"], ["theta"]),
        helper.make_node("ReduceMean", ["images", "axes"], ["colour"], keepdims=0),
        helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
    ]
    constants += [
        numpy_helper.from_array(np.array(WARP_THETA, np.float32).reshape(2, 3), "theta_rows"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(CLASSIFIER_WEIGHTS, "weights"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_warp",
        [_value("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [_value("warped", TensorProto.FLOAT, ["B", 3, SIZE, SIZE]), _value("theta", TensorProto.FLOAT, ["B", 2, 3]),
         _value("logits", TensorProto.FLOAT, ["B", len(CLASSIFIER_LABELS)])],
        constants,
    )
    folder = _save(repository, "tiny_warp", graph, _config(
        "tiny_warp", "warp",
        [("images", "TYPE_FP32", (3, SIZE, SIZE))],
        [("warped", "TYPE_FP32", (3, SIZE, SIZE)), ("theta", "TYPE_FP32", (2, 3)),
         ("logits", "TYPE_FP32", (len(CLASSIFIER_LABELS),))],
        {"preprocessing": _preprocessing()},
        labelled="logits",
    ))
    (folder / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")


def write_tiny_aligner(repository: Path) -> Path:
    """Add tiny_align (`images` -> `regions` [B, 2, 2]) and tiny_align_sentence (`tokens` [B, 8] -> `words`
    [B, 8, 2]) to `repository` and return it."""
    regions, dim = len(ALIGN_REGIONS), 2
    weights = np.random.default_rng(1).standard_normal((3, regions * dim)).astype(np.float32)
    image = helper.make_graph(
        [helper.make_node("ReduceMean", ["images", "axes"], ["colour"], keepdims=0),
         helper.make_node("MatMul", ["colour", "weights"], ["flat"]),
         helper.make_node("Reshape", ["flat", "shape"], ["regions"])],
        "tiny_align",
        [_value("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [_value("regions", TensorProto.FLOAT, ["B", regions, dim])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(weights, "weights"),
         numpy_helper.from_array(np.array([-1, regions, dim], np.int64), "shape")],
    )
    folder = _save(repository, "tiny_align", image, _config(
        "tiny_align", "align",
        [("images", "TYPE_FP32", (3, SIZE, SIZE))],
        [("regions", "TYPE_FP32", (regions, dim))],
        {"preprocessing": _preprocessing(), "sentence_model": "tiny_align_sentence", "vocabulary": "vocabulary.txt",
         "pad_token": "0", "max_words": str(ALIGN_MAX_WORDS), "regions": json.dumps(ALIGN_REGIONS)},
    ))
    (folder / "vocabulary.txt").write_text("\n".join(ALIGN_VOCABULARY) + "\n")
    table = np.random.default_rng(2).standard_normal((len(ALIGN_VOCABULARY), dim)).astype(np.float32)
    sentence = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["words"])],
        "tiny_align_sentence",
        [_value("tokens", TensorProto.INT64, ["B", ALIGN_MAX_WORDS])],
        [_value("words", TensorProto.FLOAT, ["B", ALIGN_MAX_WORDS, dim])],
        [numpy_helper.from_array(table, "table")],
    )
    _save(repository, "tiny_align_sentence", sentence, _config(
        "tiny_align_sentence", "align_sentence",
        [("tokens", "TYPE_INT64", (ALIGN_MAX_WORDS,))],
        [("words", "TYPE_FP32", (ALIGN_MAX_WORDS, dim))],
        {"input_ranges": json.dumps({"tokens": [0, len(ALIGN_VOCABULARY) - 1]})},
    ))
    return repository


def _write_explainer(repository: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["rank"], ["channel"]),
            helper.make_node("Cast", ["rank"], ["rank_float"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["ten", "rank_float"], ["activation"]),
            helper.make_node("Concat", ["rank", "rank"], ["position"], axis=1),
            helper.make_node("Unsqueeze", ["activation", "image_axes"], ["scale"]),
            helper.make_node("Mul", ["images", "scale"], ["projection"]),
            helper.make_node("Cast", ["class"], ["contribution"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["activation", "ones"], ["logits"]),
        ],
        "tiny_explain",
        [_value("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE]), _value("layer", TensorProto.INT64, ["B", 1]),
         _value("rank", TensorProto.INT64, ["B", 1]), _value("class", TensorProto.INT64, ["B", 1])],
        [_value("projection", TensorProto.FLOAT, ["B", 3, SIZE, SIZE]), _value("channel", TensorProto.INT64, ["B", 1]),
         _value("activation", TensorProto.FLOAT, ["B", 1]), _value("position", TensorProto.INT64, ["B", 2]),
         _value("contribution", TensorProto.FLOAT, ["B", 1]),
         _value("logits", TensorProto.FLOAT, ["B", len(CLASSIFIER_LABELS)])],
        [numpy_helper.from_array(np.array(10.0, np.float32), "ten"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "image_axes"),
         numpy_helper.from_array(np.ones((1, len(CLASSIFIER_LABELS)), np.float32), "ones")],
    )
    folder = _save(repository, "tiny_explain", graph, _config(
        "tiny_explain", "explain",
        [("images", "TYPE_FP32", (3, SIZE, SIZE)), ("layer", "TYPE_INT64", (1,)), ("rank", "TYPE_INT64", (1,)),
         ("class", "TYPE_INT64", (1,))],
        [("projection", "TYPE_FP32", (3, SIZE, SIZE)), ("channel", "TYPE_INT64", (1,)),
         ("activation", "TYPE_FP32", (1,)), ("position", "TYPE_INT64", (2,)), ("contribution", "TYPE_FP32", (1,)),
         ("logits", "TYPE_FP32", (len(CLASSIFIER_LABELS),))],
        {"preprocessing": _preprocessing(), "explain_layers": json.dumps(EXPLAIN_LAYERS)},
        labelled="logits",
    ))
    (folder / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")
