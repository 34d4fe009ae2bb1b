"""``ninefold export --precision fp16``: the half-precision classifier written beside the fp32 one, its parity and
answer-agreement gates (and that they fail a broken graph), the refusal of families without fp16, and a real
server answering from both.

Weights are seeded random small ResNets (no training): below the quality bar, so exports pass
--allow-below-threshold, but their logits still depend on the image, which is all agreement needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clients.client import VisionClient
from clients.server_process import ServerProcess
from contract import model_config
from contract.names import BELOW_THRESHOLD_PARAMETER, FP16, FP32, PRECISION_PARAMETER
from contract.scenes import make_scenes
from export import onnx as onnx_export
from export import precision as precision_export
from export.__main__ import EXIT_BAD_INPUT, main
from export.families import get_family
from export.families.base import GraphSpec, ParityError, QualityError
from export.families.classifier import ClassifierFamily
from export.pipeline import build_repository


def resnet_weights(path: Path, logit_scale: float = 1.0) -> Path:
    """A seeded random small ResNet's state_dict; logit_scale multiplies its last layer (its logits)."""
    family = get_family("resnet")
    torch.manual_seed(0)
    model = family.build(family.configs["small"])
    with torch.no_grad():
        model.fc.weight.mul_(logit_scale)
        model.fc.bias.mul_(logit_scale)
    torch.save(model.state_dict(), path)
    return path


def export(out: Path, weights: Path, precisions: tuple[str, ...], allow: bool = True):
    return build_repository(
        out, families=["resnet"], weights={"resnet": weights}, allow_below_threshold=allow, precisions=precisions
    )


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet_small and resnet_small_fp16 in one repository, from one export."""
    root = tmp_path_factory.mktemp("fp16")
    results = export(root / "repo", resnet_weights(root / "resnet.pt"), (FP32, FP16))
    assert [result.name for result in results] == ["resnet_small", "resnet_small_fp16"]
    return root / "repo"


def report(folder: Path) -> dict:
    return json.loads((folder / "1" / "export_report.json").read_text())


def test_the_fp16_model_has_half_weights_and_ops_behind_the_fp32_interface(both: Path) -> None:
    graph = onnx.load(str(both / "resnet_small_fp16" / "1" / "model.onnx"))
    weights = [tensor for tensor in graph.graph.initializer if len(tensor.dims) > 1]
    assert weights and all(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in weights)
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    types = {value.name: value.type.tensor_type.elem_type for value in (*inferred.value_info, *inferred.input)}
    types.update({tensor.name: tensor.data_type for tensor in inferred.initializer})
    heavy = [node for node in inferred.node if node.op_type in ("Conv", "Gemm")]
    assert heavy and all(types[node.input[0]] == onnx.TensorProto.FLOAT16 for node in heavy)
    fp32 = model_config.read(both / "resnet_small")
    fp16 = model_config.read(both / "resnet_small_fp16")
    assert fp16.input == fp32.input and fp16.output == fp32.output  # the served interface: FP32, same names
    parameters = model_config.parameters(fp16)
    assert parameters[PRECISION_PARAMETER] == FP16 and PRECISION_PARAMETER not in model_config.parameters(fp32)
    assert parameters["preprocessing"] == model_config.parameters(fp32)["preprocessing"]
    session = onnx_export.open_session(both / "resnet_small_fp16" / "1" / "model.onnx")
    (logits,) = session.run(None, {"images": np.zeros((3, 3, 32, 32), np.float32)})
    assert logits.dtype == np.float32 and logits.shape == (3, 8)
    # half the bytes (a few fp32 constants and the graph itself aside)
    sizes = [(both / name / "1" / "model.onnx").stat().st_size for name in ("resnet_small", "resnet_small_fp16")]
    assert sizes[1] < 0.6 * sizes[0]


def test_the_report_records_fp16_parity_and_the_answer_agreement(both: Path) -> None:
    written = report(both / "resnet_small_fp16")
    assert written["precision"] == FP16 and report(both / "resnet_small")["precision"] == FP32
    checks = written["parity"]["checks"]
    assert written["parity"]["passed"] and {check["name"] for check in checks} == {"real/logits", "random/logits"}
    assert all("row_rtol" in check["detail"] for check in checks)  # the fp16 bound, not fp32's 1e-4
    assert any(check["max_abs_diff"] > 1e-5 for check in checks)  # fp16 arithmetic really ran: not fp32 inside
    agreement = {bar["metric"]: bar for bar in written["agreement"]}
    assert set(agreement) == {"fp16_top1_agreement", "fp16_top5_agreement"}
    assert all(bar["passed"] and bar["value"] >= bar["threshold"] for bar in agreement.values())
    # random weights miss the quality bars; the fp16 model is stamped with those misses only
    assert written["below_threshold"] == report(both / "resnet_small")["below_threshold"]


def test_fp16_alone_writes_only_the_fp16_model(tmp_path: Path) -> None:
    weights = resnet_weights(tmp_path / "resnet.pt")
    out = tmp_path / "repo"
    code = main(
        ["--families", "resnet", "--weights", f"resnet={weights}", "--precision", "fp16", "--allow-below-threshold"]
        + ["--out", str(out)]
    )
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["resnet_small_fp16"]


def test_a_graph_with_other_answers_fails_the_agreement_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The half copy's classes rolled by one: parity would refuse it too; with parity and the (random weights')
    quality bars out of the way, the agreement gate alone refuses it (not written), and --allow-below-threshold
    writes it stamped."""
    half_graph = precision_export.half_graph

    def rolled(graph: GraphSpec) -> GraphSpec:
        spec = half_graph(graph)
        head = spec.module.half_module.fc
        with torch.no_grad():
            head.weight.copy_(head.weight.roll(1, dims=0))
            head.bias.copy_(head.bias.roll(1, dims=0))
        return spec

    monkeypatch.setattr(precision_export, "half_graph", rolled)
    monkeypatch.setattr(onnx_export, "graph_parity", lambda graph, session: ())
    monkeypatch.setattr(ClassifierFamily, "evaluate", lambda self, model, config, seed: None)
    weights = resnet_weights(tmp_path / "resnet.pt")
    below = r"resnet_small_fp16\) is below its quality bar: .*fp16_top1_agreement 0\.\d+ < 0.99"
    with pytest.raises(QualityError, match=below):
        export(tmp_path / "repo", weights, (FP32, FP16), allow=False)
    assert list((tmp_path / "repo").iterdir()) == []  # nothing written, fp32 included
    (_, stamped) = export(tmp_path / "repo", weights, (FP32, FP16))
    below = model_config.parameters(model_config.read(stamped.path))[BELOW_THRESHOLD_PARAMETER]
    assert below.startswith("fp16_top1_agreement") and "fp16_top5_agreement" in below


def test_an_fp16_overflow_fails_parity_and_nothing_is_written(tmp_path: Path) -> None:
    """Logits beyond fp16's largest value (65504) become inf in the fp16 graph (fp16 alone: fp32's absolute
    1e-4 bound is not meant for logits of 1e6)."""
    weights = resnet_weights(tmp_path / "resnet.pt", logit_scale=1e6)
    with pytest.raises(ParityError, match="resnet_small_fp16: ONNX output differs from PyTorch"):
        export(tmp_path / "repo", weights, (FP16,))
    assert list((tmp_path / "repo").iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--families", "stn", "--precision", "fp16"], "--precision fp16: stn is not exported in fp16"),
        (["--families", "resnet", "--precision", "fp8"], "--precision: expected a comma list of fp32, fp16"),
    ],
)
def test_the_cli_refuses_what_has_no_fp16_export(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*arguments, "--out", str(tmp_path / "repo")]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"ninefold export: {message}")
    assert not (tmp_path / "repo").exists()


@pytest.fixture()
def server(both: Path) -> Iterator[VisionClient]:
    with ServerProcess.start(both) as process, VisionClient(process.target, timeout=30) as client:
        yield client


def test_a_server_answers_from_fp16_beside_fp32_with_the_same_top1(server: VisionClient) -> None:
    images = [scene.image for scene in make_scenes(6, 32, seed=5, split="test")]
    top1 = {
        name: [(r.predictions[0].index, r.predictions[0].score) for r in server.classify(images, model=name).results]
        for name in ("resnet_small", "resnet_small_fp16")
    }
    assert [index for index, _ in top1["resnet_small_fp16"]] == [index for index, _ in top1["resnet_small"]]
    assert np.ptp([score for _, score in top1["resnet_small"]]) > 1e-2  # answers that depend on the image
