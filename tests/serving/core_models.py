"""Tiny real ONNX graphs and repositories for the serving core's tests (built with onnx.helper in ms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
FEATURES = 4


def save(graph: onnx.GraphProto, path: Path) -> Path:
    """Write `graph` as an ONNX model file (opset 18, IR version ONNX Runtime 1.32 accepts)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def doubler_graph(width: int | str = FEATURES) -> onnx.GraphProto:
    """y = 2 * x, FP32 [B, width] -> [B, width]; `width` may be a symbolic (dynamic) name."""
    return helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )


def batch_dropping_graph() -> onnx.GraphProto:
    """y = sum over the batch axis: breaks the batch contract on purpose, FP32 [B, 4] -> [4]."""
    return helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        "batch_dropper",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [FEATURES])],
        initializer=[numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")],
    )


def lookup_graph(rows: int = 4, width: int = FEATURES) -> onnx.GraphProto:
    """y = table[token], token INT64 [B, 1] -> y FP32 [B, width] with table[i] = i: an embedding lookup,
    which ONNX Runtime refuses to run for a token outside 0..rows-1 (the whole batch fails)."""
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], width, axis=1)
    return helper.make_graph(
        [helper.make_node("Squeeze", ["token", "axis"], ["flat"]),
         helper.make_node("Gather", ["table", "flat"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("token", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )


def matmul_loop(source: str, target: str, weight: np.ndarray, iterations: int) -> tuple[onnx.NodeProto, list]:
    """A Loop node computing `target` = `source` @ `weight`, `iterations` times over (FP32 [B, width]), and
    its initializers (named w, trips, keep_going): slow on purpose, and exact when `weight` is the identity."""
    width = weight.shape[0]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["h_in", "w"], ["h_out"])],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", width])],
    )
    initializers = [
        numpy_helper.from_array(weight.astype(np.float32), "w"),
        numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "keep_going"),
    ]
    return helper.make_node("Loop", ["trips", "keep_going", source], [target], body=body), initializers


def slow_graph(width: int = 1024, iterations: int = 600) -> onnx.GraphProto:
    """`iterations` (width x width) MatMuls in one Loop node: tens to hundreds of ms per item on a CPU,
    so a request reliably keeps its instance busy while a test sends others; one node, so it loads in
    milliseconds. FP32 [B, width] -> [B, width]."""
    rng = np.random.default_rng(0)
    loop, initializers = matmul_loop("x", "y", rng.standard_normal((width, width)) / np.sqrt(width), iterations)
    return helper.make_graph(
        [loop],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )


def write_model(repository: Path, name: str, graph: onnx.GraphProto, config_body: str) -> Path:
    """`<repository>/<name>/config.pbtxt` (name + platform + `config_body`) and `1/model.onnx`."""
    folder = repository / name
    save(graph, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n{config_body}')
    return folder


def tensor_config(width: int, max_batch_size: int = 8, extra: str = "") -> str:
    """config.pbtxt body for a plain tensor model x FP32 [width] -> y FP32 [width]."""
    return (
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width} ] }} ]\n' + extra
    )
