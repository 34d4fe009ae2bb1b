"""Small model repositories written by hand, as a Triton user would write them.

`write_plain_triton_model` is Triton's classic "simple" example: two INT32 [16] inputs, their sum
and difference, and a config.pbtxt with no ninefold parameter at all. `write_tiny_classifier`
is a task model that follows docs/MODEL_REPOSITORY.md (task, preprocessing, labels) with a graph
small enough to build in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""

CLASSIFIER_LABELS = ("circle", "square", "triangle", "star")
#: (3 colours, 4 classes): logits = per-channel mean @ CLASSIFIER_WEIGHTS.
CLASSIFIER_WEIGHTS = np.array(
    [[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -0.5, 1.0], [-1.0, 0.0, 1.5, 0.25]], dtype=np.float32
)


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_plain_triton_model(
    repository: Path, name: str = "simple", *, list_tensors: bool = True, swapped: bool = False
) -> Path:
    """Triton's "simple" model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [B, 16]).

    `list_tensors=False` writes a config without input/output, as Triton users do for ONNX models
    (the server takes the signature from the model file). `swapped=True` writes a look-alike: the same
    signature, the outputs the other way round and max_batch_size 4 (which files were read shows)."""
    folder = repository / name
    tensor = [TensorProto.INT32, ["batch", 16]]
    outputs = ["OUTPUT1", "OUTPUT0"] if swapped else ["OUTPUT0", "OUTPUT1"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], [outputs[0]]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], [outputs[1]])],
        name,
        [helper.make_tensor_value_info(n, *tensor) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, *tensor) for n in ("OUTPUT0", "OUTPUT1")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), folder / "1" / "model.onnx")
    config = SIMPLE_CONFIG.replace('"simple"', f'"{name}"')
    if swapped:
        config = config.replace("max_batch_size: 8", "max_batch_size: 4")
    if not list_tensors:
        config = config[: config.index("input [")]
    (folder / "config.pbtxt").write_text(config)
    return folder


def write_tiny_classifier(repository: Path, name: str = "tiny_classifier", size: int = 8) -> Path:
    """A classify-task model: images FP32 [B, 3, size, size] -> logits FP32 [B, 4] = mean colour @ W."""
    folder = repository / name
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images", "axes"], ["colour"], keepdims=0),
         helper.make_node("MatMul", ["colour", "weights"], ["logits"])],
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSIFIER_LABELS)])],
        initializer=[numpy_helper.from_array(CLASSIFIER_WEIGHTS, "weights"),
                     numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")
    preprocessing = f'{{\\"size\\": [{size}, {size}], \\"mean\\": [0.5, 0.5, 0.5], \\"std\\": [0.25, 0.25, 0.25]}}'
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 16\n"
        f'input [ {{ name: "images" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {len(CLASSIFIER_LABELS)} ] '
        'label_filename: "labels.txt" } ]\n'
        "dynamic_batching { }\n"
        'parameters { key: "task" value { string_value: "classify" } }\n'
        f'parameters {{ key: "preprocessing" value {{ string_value: "{preprocessing}" }} }}\n'
    )
    return folder


def tiny_classifier_logits(images: np.ndarray) -> np.ndarray:
    """What write_tiny_classifier's graph computes, for checking answers: (B, 3, H, W) -> (B, 4)."""
    return images.mean(axis=(2, 3)) @ CLASSIFIER_WEIGHTS
