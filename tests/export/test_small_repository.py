"""Every registered family's small config, trained and exported once (the shared ``small_repository``):
parity passed, quality thresholds met, config.pbtxt is Triton ModelConfig text matching the ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from contract import model_config
from contract.scenes import SHAPES, make_scenes, stack_images
from export import onnx as onnx_export
from export.data.tensors import normalise
from export.families import family_names, get_family
from protos.inference import model_config_pb2

FAMILIES = family_names()
CLASSIFIERS = [name for name in FAMILIES if get_family(name).task == "classify"]
ONNX_TYPES = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_INT64": onnx.TensorProto.INT64}


def _model_folders(repository: Path, family: str) -> list[Path]:
    return sorted(p for p in repository.iterdir() if p.is_dir() and p.name.startswith(f"{family}_small"))


def _report(folder: Path) -> dict:
    return json.loads((folder / "1" / "export_report.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_exported_with_parity(small_repository: Path, family: str) -> None:
    folders = _model_folders(small_repository, family)
    assert folders, f"no model folder for {family} in {small_repository}"
    for folder in folders:
        report = _report(folder)
        assert report["family"] == family and report["config"] == "small" and report["opset"] >= 17
        assert report["parity"]["passed"], report["parity"]
        case_names = {check["name"].split("/")[0] for check in report["parity"]["checks"]}
        if report["inputs"][0]["name"] == "images":  # image models: scenes and noise; others (z, tokens): any
            assert {"real", "random"} <= case_names, case_names


@pytest.mark.parametrize("family", FAMILIES)
def test_family_meets_its_quality_threshold(small_repository: Path, family: str) -> None:
    quality = _report(small_repository / f"{family}_small")["quality"]
    assert quality is not None, f"{family} small reports no quality"
    assert quality["passed"], f"{family}: {quality['metric']} {quality['value']:.3f} vs {quality['threshold']}"


@pytest.mark.parametrize("family", FAMILIES)
def test_config_matches_the_onnx_graph(small_repository: Path, family: str) -> None:
    for folder in _model_folders(small_repository, family):
        config = model_config.read(folder)
        assert config.name == folder.name and config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        graph = onnx.load(str(folder / "1" / "model.onnx"))
        for declared, actual in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
            assert [t.name for t in declared] == [t.name for t in actual]
            for tensor, value in zip(declared, actual, strict=True):
                assert ONNX_TYPES[model_config_pb2.DataType.Name(tensor.data_type)] == value.type.tensor_type.elem_type
                shape = value.type.tensor_type.shape.dim
                assert shape[0].dim_param == "batch"  # dynamic batch axis
                assert [d.dim_value if d.dim_value else -1 for d in shape[1:]] == list(tensor.dims)
        for output in config.output:
            if output.label_filename:
                labels = (folder / output.label_filename).read_text().splitlines()
                if output.data_type == model_config_pb2.TYPE_FP32:  # one score per class (classify, warp)
                    assert len(labels) == output.dims[-1]
                else:  # class indices (detect)
                    assert labels
        assert config.parameters["family"].string_value == family


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_classifier_reports_its_multi_crop_figures_and_clears_their_bar(small_repository: Path, family: str) -> None:
    quality = _report(small_repository / f"{family}_small")["quality"]
    multicrop = quality["details"]["multicrop"]
    figures = {row["crops"]: row for row in multicrop["by_crops"]}
    assert sorted(figures) == [1, 5, 10] and figures[1]["agreement_with_one_crop"] == 1.0
    for row in figures.values():
        assert row["accuracy_change"] == pytest.approx(row["accuracy"] - figures[1]["accuracy"], abs=1e-3)
    (gate,) = [bar for bar in quality["gates"] if bar["metric"] == "top1_10_crops"]
    assert gate["value"] == pytest.approx(figures[10]["accuracy"], abs=1e-4)
    assert gate["threshold"] == quality["threshold"] and gate["value"] >= gate["threshold"], gate


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_exported_classifier_classifies_fresh_scenes_in_any_batch_size(small_repository: Path, family: str) -> None:
    folder = small_repository / f"{family}_small"
    config = model_config.read(folder)
    preprocessing = json.loads(config.parameters["preprocessing"].string_value)
    assert (folder / "labels.txt").read_text().splitlines() == list(SHAPES)
    # 240 scenes: at the recipes' >= 0.97 the chance of 24 misses (below 0.9) is negligible; with 48 it was not.
    scenes = make_scenes(240, preprocessing["size"][0], seed=424242)
    images = normalise(stack_images(scenes), preprocessing["mean"], preprocessing["std"]).numpy()
    session = onnx_export.open_session(folder / "1" / "model.onnx")
    predictions = np.concatenate([session.run(None, {"images": images[i : i + b]})[0] for i, b in ((0, 1), (1, 239))])
    accuracy = float(np.mean(predictions.argmax(1) == np.array([s.label for s in scenes])))
    assert accuracy >= 0.9, f"{family}: {accuracy:.3f} on fresh scenes"
