"""Model folders: config.pbtxt is Triton ModelConfig text, and folders appear whole or not at all."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from contract import model_config
from contract.tensors import TensorSpec
from export import repository
from export.families.base import DEFAULT_TOLERANCE, ExportError, GraphSpec, ParityCase, Tolerance
from protos.inference import model_config_pb2


def _graph() -> GraphSpec:
    return GraphSpec(
        module=nn.Identity(),
        inputs=(TensorSpec("token", (1,), model_config_pb2.TYPE_INT64), TensorSpec("h", (16,))),
        outputs=(
            TensorSpec("logprobs", (-1,), label_filename="labels.txt"),
            TensorSpec("count", (1,), model_config_pb2.TYPE_INT64),
        ),
        tolerances={"count": Tolerance.exact()},
        parity_cases=(ParityCase("random", {"token": np.zeros((1, 1), np.int64)}),),
        max_batch_size=64,
        task="caption_decoder",
        suffix="_decoder",
        parameters={"preprocessing": '{"size": [32, 32], "mean": [0.5], "std": [0.25]}', "max_length": "12"},
        labels=("a", "b"),
        extra_files={"vocabulary.txt": "<start>\n<end>\n"},
    )


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    parsed = model_config.parse(text)
    assert not parsed.ignored, parsed.ignored
    return parsed.config


def test_rendered_config_parses_as_triton_model_config() -> None:
    config = parse_config(repository.render_config("captioner_small_decoder", "captioner", _graph()))
    assert config.name == "captioner_small_decoder" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("token", model_config_pb2.TYPE_INT64, [1]),
        ("h", model_config_pb2.TYPE_FP32, [16]),
    ]
    assert config.output[0].label_filename == "labels.txt" and list(config.output[0].dims) == [-1]
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == repository.MAX_QUEUE_DELAY_US
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert model_config.parameters(config) == {
        "task": "caption_decoder",
        "family": "captioner",
        "preprocessing": '{"size": [32, 32], "mean": [0.5], "std": [0.25]}',
        "max_length": "12",
    }


def test_the_rendered_config_reads_back_as_the_message_it_was_rendered_from() -> None:
    config = repository.graph_config("captioner_small_decoder", "captioner", _graph())
    assert parse_config(model_config.render(config)) == config


def test_outputs_without_a_named_tolerance_get_the_default_and_unknown_names_are_refused() -> None:
    graph = _graph()
    assert graph.tolerance("count") == Tolerance.exact() and graph.tolerance("logprobs") == DEFAULT_TOLERANCE
    with pytest.raises(ValueError, match=r"tolerances for \['h'\], which are not outputs"):
        dataclasses.replace(graph, tolerances={"h": DEFAULT_TOLERANCE})


def test_signature_names_numpy_dtypes_and_the_batch_axis() -> None:
    assert repository.signature(_graph().inputs) == [
        {"name": "token", "dtype": "int64", "shape": ["B", 1]},
        {"name": "h", "dtype": "float32", "shape": ["B", 16]},
    ]


@pytest.mark.parametrize(("max_batch", "preferred"), [(1, ()), (4, (2,)), (32, (8, 16)), (6, (3,))])
def test_preferred_batch_sizes_are_a_quarter_and_a_half(max_batch: int, preferred: tuple[int, ...]) -> None:
    assert repository.preferred_batch_sizes(max_batch) == preferred


def test_staged_model_appears_whole_with_its_files(tmp_path: Path) -> None:
    graph = _graph()
    with repository.staged_model(tmp_path, "m") as folder:
        (folder / "1" / "model.onnx").write_bytes(b"onnx")
        repository.write_metadata(folder, "m", "captioner", graph, {"model": "m"})
        assert not (tmp_path / "m").exists()  # not visible before it is complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (tmp_path / "m" / "labels.txt").read_text() == "a\nb\n"
    assert (tmp_path / "m" / "vocabulary.txt").read_text() == "<start>\n<end>\n"
    assert (tmp_path / "m" / "1" / "export_report.json").exists()
    parse_config((tmp_path / "m" / "config.pbtxt").read_text())


def test_failure_while_staging_leaves_the_previous_model_untouched(tmp_path: Path) -> None:
    with repository.staged_model(tmp_path, "m") as folder:
        (folder / "1" / "model.onnx").write_bytes(b"old")
    with pytest.raises(RuntimeError), repository.staged_model(tmp_path, "m") as folder:
        (folder / "1" / "model.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging leftovers
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"old"


def test_a_new_export_replaces_the_previous_folder(tmp_path: Path) -> None:
    for content in (b"old", b"new"):
        with repository.staged_model(tmp_path, "m") as folder:
            (folder / "1" / "model.onnx").write_bytes(content)
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory|cannot create"):
        repository.check_writable(tmp_path / "file")
    with pytest.raises(ExportError, match="cannot create"):
        repository.check_writable(tmp_path / "file" / "below")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_directory_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            repository.check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o700)
