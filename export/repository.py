"""Writes model folders in Triton's layout (docs/MODEL_REPOSITORY.md), atomically.

A model folder is staged in a hidden temporary directory in the repository itself (same file system) and
renamed into place only when complete, so a reader (the server, a crash, a full disk) never sees a
half-written model: it sees the previous folder or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from export.families.base import TRITON_DTYPES, ExportError, GraphSpec, TensorSpec

PLATFORM = "onnxruntime_onnx"
LABELS_FILE = "labels.txt"
VERSION = "1"
MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"
MAX_QUEUE_DELAY_US = 500
MAX_QUEUE_SIZE = 256


def model_name(family: str, config: str, suffix: str = "") -> str:
    """``<family>_<config><suffix>``, e.g. resnet_small, captioner_small_decoder."""
    return f"{family}_{config}{suffix}"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _tensor_entry(tensor: TensorSpec, *, output: bool) -> str:
    dims = ", ".join(str(d) for d in tensor.dims)
    entry = f"name: {_quote(tensor.name)} data_type: {TRITON_DTYPES[tensor.dtype]} dims: [ {dims} ]"
    if output and tensor.label_filename:
        entry += f" label_filename: {_quote(tensor.label_filename)}"
    return "  { " + entry + " }"


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Quarter and half of max_batch_size (powers of two >= 2 only): batches worth waiting a moment for."""
    sizes = [size for size in (max_batch_size // 4, max_batch_size // 2) if size >= 2]
    return tuple(sorted(set(sizes)))


def render_config(name: str, family: str, graph: GraphSpec) -> str:
    """config.pbtxt text (Triton ModelConfig text format) for one exported graph."""
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORM)}",
        f"max_batch_size: {graph.max_batch_size}",
        "input [",
        ",\n".join(_tensor_entry(t, output=False) for t in graph.inputs),
        "]",
        "output [",
        ",\n".join(_tensor_entry(t, output=True) for t in graph.outputs),
        "]",
        "dynamic_batching {",
    ]
    preferred = preferred_batch_sizes(graph.max_batch_size)
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred)} ]")
    lines += [
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        f"  default_queue_policy {{ max_queue_size: {MAX_QUEUE_SIZE} default_timeout_microseconds: 0 }}",
        "}",
        "instance_group [ { kind: KIND_AUTO count: 1 } ]",
    ]
    parameters: dict[str, str] = {}
    if graph.task is not None:
        parameters["task"] = graph.task
    parameters["family"] = family
    parameters.update(graph.parameters)
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_quote(key)} value {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def check_writable(repository: Path) -> None:
    """Create the repository folder if needed; raise ExportError when it cannot hold new models."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create output directory {repository}: {error.strerror}") from None
    if not repository.is_dir():
        raise ExportError(f"output path {repository} exists and is not a directory")
    if not os.access(repository, os.W_OK | os.X_OK):
        raise ExportError(f"output directory {repository} is not writable")


@contextlib.contextmanager
def staged_model(repository: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging folder; on normal exit it replaces ``repository/name``, on error it vanishes.

    The version folder ``1/`` exists already in the staged folder.
    """
    check_writable(repository)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=repository))
    try:
        (staging / VERSION).mkdir()
        yield staging
        final = repository / name
        retired = None
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.retired-", dir=repository))
            os.replace(final, retired / name)
        os.replace(staging, final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_metadata(folder: Path, name: str, family: str, graph: GraphSpec, report: Mapping[str, object]) -> None:
    """config.pbtxt, labels.txt, extra files and 1/export_report.json into a (staged) model folder."""
    (folder / "config.pbtxt").write_text(render_config(name, family, graph))
    if graph.labels is not None:
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in graph.labels))
    for file_name, content in graph.extra_files.items():
        (folder / file_name).write_text(content)
    (folder / VERSION / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def signature(tensors: Sequence[TensorSpec]) -> list[dict[str, object]]:
    """JSON-friendly tensor list for the report: name, dtype, shape with "B" for the batch axis."""
    return [{"name": t.name, "dtype": t.dtype, "shape": ["B", *t.dims]} for t in tensors]
