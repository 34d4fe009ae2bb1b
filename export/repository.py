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

from contract import model_config
from contract.model_config import CONFIG_FILE, LABELS_FILE
from contract.names import FAMILY_PARAMETER, ONNX_PLATFORM, TASK_PARAMETER
from contract.tensors import TensorSpec
from export.families.base import ExportError, GraphSpec
from protos.inference import model_config_pb2 as mc

VERSION = "1"
MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"
MAX_QUEUE_DELAY_US = 500
MAX_QUEUE_SIZE = 256


def model_name(family: str, config: str, suffix: str = "") -> str:
    """``<family>_<config><suffix>``, e.g. resnet_small, captioner_small_decoder."""
    return f"{family}_{config}{suffix}"


def preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Quarter and half of max_batch_size (powers of two >= 2 only): batches worth waiting a moment for."""
    sizes = [size for size in (max_batch_size // 4, max_batch_size // 2) if size >= 2]
    return tuple(sorted(set(sizes)))


def graph_config(name: str, family: str, graph: GraphSpec) -> mc.ModelConfig:
    """The ModelConfig of one exported graph: its tensors, dynamic batching, one instance (KIND_AUTO) and
    the parameters task, family and the graph's own."""
    config = mc.ModelConfig(name=name, platform=ONNX_PLATFORM, max_batch_size=graph.max_batch_size)
    model_config.add_inputs(config, graph.inputs)
    model_config.add_outputs(config, graph.outputs)
    batching = config.dynamic_batching
    batching.SetInParent()  # present even when every field below is at its default
    batching.preferred_batch_size.extend(preferred_batch_sizes(graph.max_batch_size))
    batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    batching.default_queue_policy.max_queue_size = MAX_QUEUE_SIZE
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO, count=1)
    task = {} if graph.task is None else {TASK_PARAMETER: graph.task}
    model_config.set_parameters(config, {**task, FAMILY_PARAMETER: family, **graph.parameters})
    return config


def render_config(name: str, family: str, graph: GraphSpec) -> str:
    """config.pbtxt text for one exported graph."""
    return model_config.render(graph_config(name, family, graph))


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
    (folder / CONFIG_FILE).write_text(render_config(name, family, graph))
    if graph.labels is not None:
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in graph.labels))
    for file_name, content in graph.extra_files.items():
        (folder / file_name).write_text(content)
    (folder / VERSION / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def signature(tensors: Sequence[TensorSpec]) -> list[dict[str, object]]:
    """JSON-friendly tensor list for the report: name, dtype, shape with "B" for the batch axis."""
    return [{"name": t.name, "dtype": t.dtype.name, "shape": ["B", *t.shape]} for t in tensors]
