"""PyTorch -> ONNX for one GraphSpec, the checker, ONNX Runtime sessions, and parity against PyTorch.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). Measured here on a small
ResNet-18: 0.6 s per graph against 2.8 s for the dynamo exporter with the same outputs (max abs difference
to PyTorch below 1e-6 both ways); nine families, ten graphs, export inside the 10-minute budget, so the
faster one wins. Every graph gets a dynamic batch axis 0 (``dynamic_axes``), and -1 dims stay dynamic.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from contract.tensors import TensorSpec
from export.families.base import GraphSpec, OnnxRunner, ParityCheck, Tolerance

OPSET = 17
EXPORTER = "torchscript"


def dynamic_axes(tensors: Sequence[TensorSpec]) -> dict[str, dict[int, str]]:
    """Axis 0 of every tensor is ``batch``; a -1 dim at position i (batch excluded) is ``<name>_<i+1>``."""
    axes: dict[str, dict[int, str]] = {}
    for tensor in tensors:
        named = {0: "batch"}
        named.update({i + 1: f"{tensor.name}_{i + 1}" for i, dim in enumerate(tensor.shape) if dim == -1})
        axes[tensor.name] = named
    return axes


def _as_tuple(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def export_graph(graph: GraphSpec, path: Path, opset: int = OPSET) -> None:
    """Write ``graph.module`` to ``path`` as ONNX (traced on the first parity case) and run onnx.checker."""
    example = tuple(torch.from_numpy(graph.parity_cases[0].inputs[spec.name]) for spec in graph.inputs)
    graph.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            graph.module,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[spec.name for spec in graph.inputs],
            output_names=[spec.name for spec in graph.outputs],
            dynamic_axes=dynamic_axes((*graph.inputs, *graph.outputs)),
            do_constant_folding=True,
        )
    declare_output_dims(path, graph.outputs)
    onnx.checker.check_model(str(path), full_check=True)


def declare_output_dims(path: Path, outputs: Sequence[TensorSpec]) -> None:
    """Write the declared fixed dims into the graph's output shapes.

    The TorchScript exporter leaves some output dims symbolic (e.g. ``GridSamplewarped_dim_2``) although
    they are fixed; the graph then disagrees with config.pbtxt. Parity still checks the real shapes.
    """
    model = onnx.load(str(path))
    by_name = {tensor.name: tensor for tensor in outputs}
    changed = False
    for value in model.graph.output:
        axes = value.type.tensor_type.shape.dim
        for axis, dim in zip(axes[1:], by_name[value.name].shape, strict=True):
            if dim > 0 and axis.dim_value != dim:
                axis.dim_value = dim  # clears the dim_param (a oneof)
                changed = True
    if changed:
        onnx.save(model, str(path))


def open_session(path: Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session (parity runs on CPU everywhere: the reference is the CPU PyTorch model)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: onnxruntime.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def runner(sessions: Mapping[str, onnxruntime.InferenceSession]) -> OnnxRunner:
    """An OnnxRunner over one session per graph suffix."""
    return lambda suffix, inputs: run_session(sessions[suffix], inputs)


@contextlib.contextmanager
def exported_runner(graphs: Sequence[GraphSpec]) -> Iterator[OnnxRunner]:
    """`graphs` exported as the pipeline exports them (into a temporary folder), behind an OnnxRunner.

    For a family's evaluate: quality measured on the graphs the server runs, not on the PyTorch modules
    (evaluate runs before the pipeline stages its own copies, and also alone, in ``measure_seeds``).
    """
    with tempfile.TemporaryDirectory(prefix="ninefold-evaluate-") as folder:
        sessions = {}
        for graph in graphs:
            path = Path(folder) / f"model{graph.suffix}.onnx"
            export_graph(graph, path)
            sessions[graph.suffix] = open_session(path)
        yield runner(sessions)


@torch.no_grad()
def run_torch(graph: GraphSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch module (``graph.reference`` where it has one) on the same named inputs -> named numpy outputs."""
    module = (graph.module if graph.reference is None else graph.reference).eval()
    outputs = _as_tuple(module(*(torch.from_numpy(inputs[spec.name]) for spec in graph.inputs)))
    return {spec.name: out.numpy() for spec, out in zip(graph.outputs, outputs, strict=True)}


def compare(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> ParityCheck:
    """Element-wise ``|actual - expected| <= atol + rtol * |expected| + row_rtol * max|expected row|``; shapes and
    dtypes must match."""
    bound = f"atol={tolerance.atol:g} rtol={tolerance.rtol:g}" + (
        f" row_rtol={tolerance.row_rtol:g}" if tolerance.row_rtol else ""
    )
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        detail = f"shape/dtype {actual.shape} {actual.dtype} != torch {expected.shape} {expected.dtype}"
        return ParityCheck(name=name, max_abs_diff=float("inf"), passed=False, detail=detail)
    if expected.size == 0:
        return ParityCheck(name=name, max_abs_diff=0.0, passed=True, detail=bound)
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    magnitude = np.abs(expected.astype(np.float64))
    allowed = tolerance.atol + tolerance.rtol * magnitude
    if tolerance.row_rtol and magnitude.ndim > 0:
        row_max = np.nan_to_num(magnitude.reshape(len(magnitude), -1), posinf=0.0).max(axis=1)
        allowed = allowed + tolerance.row_rtol * row_max.reshape((-1,) + (1,) * (magnitude.ndim - 1))
    passed = bool(np.all(difference <= allowed)) and bool(np.all(np.isfinite(actual) == np.isfinite(expected)))
    return ParityCheck(name=name, max_abs_diff=float(np.nanmax(difference)), passed=passed, detail=bound)


def graph_parity(graph: GraphSpec, session: onnxruntime.InferenceSession) -> tuple[ParityCheck, ...]:
    """One check per (parity case, output): ONNX Runtime against PyTorch with the output's tolerance."""
    checks = []
    for case in graph.parity_cases:
        expected = run_torch(graph, case.inputs)
        actual = run_session(session, case.inputs)
        for spec in graph.outputs:
            name = spec.name
            checks.append(compare(f"{case.name}/{name}", expected[name], actual[name], graph.tolerance(name)))
    return tuple(checks)
