"""Explain (Zeiler & Fergus's DeconvNet) end to end: the exported ZF Net explain graph served over
loopback gRPC, its answers against the autograd reference DeconvNet on the trained weights (read
back from the served ONNX graph), its receptive fields, its batching and its errors; the class mode
against autograd's gradient x activation through the trained classifier.

The server gets a repository of the explain model alone (a copy from `small_repository`), so that
it starts in seconds, and so that the test runs whichever families the fixture holds besides ZF Net;
beside it the same graph cut back to the contract before the class mode (`OLD_MODEL`).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from onnx import helper, numpy_helper
from PIL import Image

from clients.bench.scrape import read_batch_counters
from clients.cli import main
from clients.server_process import ServerProcess
from contract.names import CLASS, CONTRIBUTION, DEFAULT_PARAMETER, INPUT_RANGES_PARAMETER, LAYER, LOGITS
from contract.scenes import make_scenes
from export.data.tensors import normalise
from export.families.zfnet import LINEARS, SMALL, ZFNet
from export.train import set_threads
from protos.inference import model_config_pb2 as mc
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from tests.export.deconvnet_reference import layer_tops, project, receptive_field, zfnet_contributions
from tests.serving.vision_helpers import encoded_image, raw_image, vision_server, vision_stub

MODEL = "zfnet_small_explain"
OLD_MODEL = "explain_before_class_mode"
SEED = 20261127


def before_class_mode(source: Path, target: Path) -> None:
    """The explain model at `source` as exported before the class mode: no `class` input (the graph computes
    -1 from `layer` in its place), no `contribution` or `logits` output, no labels."""
    shutil.copytree(source, target)
    path = target / "1" / "model.onnx"
    graph = onnx.load(str(path))
    graph.graph.input.remove(next(i for i in graph.graph.input if i.name == CLASS))
    for name in (CONTRIBUTION, LOGITS):
        graph.graph.output.remove(next(o for o in graph.graph.output if o.name == name))
    graph.graph.initializer.extend(
        [numpy_helper.from_array(np.array(value, np.int64), name) for name, value in (("zero", 0), ("minus_one", -1))]
    )
    graph.graph.node.insert(0, helper.make_node("Mul", [LAYER, "zero"], ["no_class"]))
    graph.graph.node.insert(1, helper.make_node("Add", ["no_class", "minus_one"], [CLASS]))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    config = text_format.Parse((target / "config.pbtxt").read_text(), mc.ModelConfig())
    config.name = target.name
    del config.input[[i.name for i in config.input].index(CLASS)]
    for name in (CONTRIBUTION, LOGITS):
        del config.output[[o.name for o in config.output].index(name)]
    del config.parameters[DEFAULT_PARAMETER]  # ZF Net's explain model stays the task's default
    ranges = json.loads(config.parameters[INPUT_RANGES_PARAMETER].string_value)
    del ranges[CLASS]
    config.parameters[INPUT_RANGES_PARAMETER].string_value = json.dumps(ranges)
    (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    (target / "labels.txt").unlink()


@pytest.fixture(scope="module")
def server(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a copy of the explain model alone, and the same cut back to before the class mode."""
    root = tmp_path_factory.mktemp("explain_repository")
    shutil.copytree(small_repository / MODEL, root / MODEL)
    before_class_mode(small_repository / MODEL, root / OLD_MODEL)
    with vision_server(root) as running:
        yield running


@pytest.fixture(scope="module")
def trained(small_repository: Path) -> ZFNet:
    """ZF Net with the served graph's own weights: its convolutions and its classifier head."""
    set_threads()
    graph = onnx.load(str(small_repository / MODEL / "1" / "model.onnx"))
    weights = {}
    for tensor in graph.graph.initializer:  # convs.0 .. convs.4: conv1 .. conv5; head.linears.0 .. 2: LINEARS
        module, part = tensor.name.rsplit(".", 1)
        kind, index = module.rsplit(".", 1)
        name = f"conv{int(index) + 1}" if kind == "convs" else LINEARS[int(index)]
        weights[f"{name}.{part}"] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    model = ZFNet(SMALL).eval()
    model.load_state_dict(weights)  # strict: every weight of ZF Net is in the explain graph
    return model


@pytest.fixture(scope="module")
def labels(small_repository: Path) -> list[str]:
    return (small_repository / MODEL / "labels.txt").read_text().split()


@pytest.fixture(scope="module")
def vision(server: ServerProcess) -> Iterator[vision_pb2_grpc.VisionStub]:
    with vision_stub(server) as stub:
        yield stub


def preprocessing(repository: Path) -> dict:
    config = text_format.Parse((repository / MODEL / "config.pbtxt").read_text(), mc.ModelConfig())
    return json.loads(config.parameters["preprocessing"].string_value)


def pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def expected_png_pixels(projection: torch.Tensor) -> np.ndarray:
    """The served normalisation: grey = 0, the largest magnitude at 0 or 255."""
    scaled = projection.numpy() / float(projection.abs().max())
    return np.clip(np.rint((scaled + 1) * 127.5), 0, 255).transpose(1, 2, 0)


@pytest.mark.parametrize("layer", ["conv1", "2", "conv5"])
def test_served_projections_equal_the_reference_deconvnet(
    vision, trained: ZFNet, small_repository: Path, layer: str
) -> None:
    scenes = make_scenes(2, SMALL.image_size, SEED)
    images = [encoded_image(scenes[0].image), raw_image(scenes[1].image)]
    response = vision.Explain(pb.ExplainRequest(images=images, layer=layer, top_k=3), timeout=60)
    assert response.model.name == MODEL and len(response.results) == 2
    settings = preprocessing(small_repository)
    number = int(layer[-1])
    for scene, result in zip(scenes, response.results, strict=True):
        assert result.layer == f"conv{number}" and len(result.channels) == 3
        image = normalise(scene.image[None], settings["mean"], settings["std"])[0]
        activations = [c.activation for c in result.channels]
        assert activations == sorted(activations, reverse=True) and activations[0] > 0
        for rank, served in enumerate(result.channels):
            reference = project(functools.partial(layer_tops, trained), image, number, rank)
            assert served.channel == reference.channel
            assert served.activation == pytest.approx(reference.activation, rel=1e-4)
            # PNG levels: the float difference (about 1e-6 relative) can move a value across a rounding edge.
            assert np.abs(pixels_of(served.png) - expected_png_pixels(reference.pixels)).max() <= 1
            y1, y2, x1, x2 = receptive_field(trained, number, *reference.position)
            box = served.receptive_field
            assert (box.x1, box.y1, box.x2, box.y2) == (max(x1, 0), max(y1, 0), min(x2, 64), min(y2, 64))


def test_k_channels_of_several_requests_batch_together(vision, server: ServerProcess) -> None:
    scenes = make_scenes(6, SMALL.image_size, SEED + 1)
    before = read_batch_counters(server.metrics_url, MODEL)

    async def explain_all() -> list[pb.ExplainResponse]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = vision_pb2_grpc.VisionStub(channel)
            requests = [pb.ExplainRequest(images=[raw_image(s.image)], layer="conv2", top_k=4) for s in scenes]
            return await asyncio.gather(*(stub.Explain(r, timeout=60) for r in requests))

    responses = asyncio.run(explain_all())
    assert [len(r.results[0].channels) for r in responses] == [4] * len(scenes)
    after = read_batch_counters(server.metrics_url, MODEL)
    assert after.inferences - before.inferences == 4 * len(scenes)  # one row per channel
    assert after.executions - before.executions <= len(scenes)  # a request's k rows run as one batch, or with others


def test_a_request_over_the_batch_size_keeps_its_rows_in_order(vision) -> None:
    """3 images x all 48 channels of conv2 = 144 rows, split into batches of at most 32 by the server."""
    images = [raw_image(scene.image) for scene in make_scenes(3, 64, SEED + 2)]
    whole = vision.Explain(pb.ExplainRequest(images=images, layer="conv2", top_k=48), timeout=60).results
    alone = vision.Explain(pb.ExplainRequest(images=images[1:2], layer="conv2", top_k=48), timeout=60).results[0]
    for result in whole:
        assert sorted(c.channel for c in result.channels) == list(range(48))
        activations = [c.activation for c in result.channels]
        assert activations == sorted(activations, reverse=True)
    assert [c.channel for c in whole[1].channels] == [c.channel for c in alone.channels]
    assert [c.activation for c in whole[1].channels] == pytest.approx([c.activation for c in alone.channels], rel=1e-5)
    for ours, single in zip(whole[1].channels, alone.channels, strict=True):  # other batches, other kernels
        assert np.abs(pixels_of(ours.png) - pixels_of(single.png)).max() <= 1


def test_defaults_are_the_last_layer_and_nine_channels(vision) -> None:
    result = vision.Explain(pb.ExplainRequest(images=[raw_image(make_scenes(1, 64, SEED)[0].image)]), timeout=60)
    assert result.results[0].layer == "conv5" and len(result.results[0].channels) == 9


@pytest.mark.parametrize(
    ("layer", "top_k", "code", "words"),
    [
        ("conv9", 1, grpc.StatusCode.INVALID_ARGUMENT, ("'conv9'", "conv1, conv2, conv3, conv4, conv5", "1 to 5")),
        ("0", 1, grpc.StatusCode.INVALID_ARGUMENT, ("'0'", "1 to 5")),
        ("6", 1, grpc.StatusCode.INVALID_ARGUMENT, ("'6'",)),
        ("conv2", SMALL.conv_widths[1] + 1, grpc.StatusCode.INVALID_ARGUMENT, ("top_k 49", "conv2", "48 channels")),
    ],
)
def test_bad_layer_or_k_is_refused_naming_the_problem(vision, layer: str, top_k: int, code, words) -> None:
    image = raw_image(make_scenes(1, 64, SEED)[0].image)
    with pytest.raises(grpc.RpcError) as raised:
        vision.Explain(pb.ExplainRequest(images=[image], layer=layer, top_k=top_k), timeout=30)
    assert raised.value.code() == code
    assert all(word in raised.value.details() for word in words), raised.value.details()
    assert len(vision.Explain(pb.ExplainRequest(images=[image], top_k=1), timeout=30).results) == 1  # still serving


def test_too_many_projections_are_refused(vision) -> None:
    images = [raw_image(scene.image) for scene in make_scenes(8, 64, SEED)]
    with pytest.raises(grpc.RpcError) as raised:
        vision.Explain(pb.ExplainRequest(images=images, layer="conv3", top_k=64), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "512 projections" in raised.value.details() and "256" in raised.value.details()


def test_cli_writes_one_png_per_channel(server: ServerProcess, tmp_path: Path, capsys) -> None:
    scene = tmp_path / "scene.png"
    Image.fromarray(make_scenes(1, 64, SEED)[0].image).save(scene)
    argv = ["explain", str(scene), "--layer", "1", "--top-k", "2", "--out", str(tmp_path / "out")]
    assert main([*argv, "--server", server.target, "--json"]) == 0
    (answer,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answer["model"] == MODEL and answer["layer"] == "conv1" and len(answer["channels"]) == 2
    for channel in answer["channels"]:
        assert set(channel) == {"channel", "activation", "receptive_field", "image_path"}
        assert Path(channel["image_path"]) == tmp_path / "out" / f"scene_conv1_channel{channel['channel']:03d}.png"
        assert Image.open(channel["image_path"]).size == (64, 64)
    assert main(["explain", str(scene), "--layer", "conv7", "--out", str(tmp_path), "--server", server.target]) == 1
    assert "layer 'conv7' is not a layer of this model" in capsys.readouterr().err


@pytest.mark.parametrize(("layer", "target"), [("conv2", 1), ("conv5", 3), ("conv5", 6)])
def test_class_mode_equals_autograd_contributions(
    vision, trained: ZFNet, small_repository: Path, labels: list[str], layer: str, target: int
) -> None:
    """The served ranking and contributions against torch.autograd on the trained classifier, the class's
    probability against its softmax, and the first channel's projection against the reference DeconvNet."""
    scene = make_scenes(1, SMALL.image_size, SEED + 3)[0]
    request = pb.ExplainRequest(images=[raw_image(scene.image)], layer=layer, top_k=4, class_label=labels[target])
    (result,) = vision.Explain(request, timeout=60).results
    settings = preprocessing(small_repository)
    image = normalise(scene.image[None], settings["mean"], settings["std"])[0]
    number = int(layer[-1])
    contributions, logits = zfnet_contributions(trained, image, target)
    scores = contributions[number - 1]
    order = sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c))
    assert [c.channel for c in result.channels] == order[:4]
    expected = [float(scores[c]) for c in order[:4]]
    assert [c.contribution for c in result.channels] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert expected[0] > 0  # the check is about real evidence, not a row of zeros
    explained = result.explained_class
    assert (explained.label, explained.index) == (labels[target], target)
    assert explained.score == pytest.approx(float(torch.softmax(logits, 0)[target]), rel=1e-4, abs=1e-6)
    with torch.no_grad():
        peaks = layer_tops(trained, image[None])[number - 1][0].flatten(1).amax(1)
    first = result.channels[0]
    by_peak = sorted(range(len(peaks)), key=lambda c: (-float(peaks[c]), c)).index(first.channel)
    reference = project(functools.partial(layer_tops, trained), image, number, by_peak)
    assert first.activation == pytest.approx(reference.activation, rel=1e-4)
    assert np.abs(pixels_of(first.png) - expected_png_pixels(reference.pixels)).max() <= 1


def test_two_classes_rank_the_channels_differently(vision, labels: list[str]) -> None:
    """Two classes' logits have different gradients, so the same image's channels rank differently; a class
    by index is the class by label."""
    image = raw_image(make_scenes(1, SMALL.image_size, SEED + 4)[0].image)

    def ranking(**explained) -> list[int]:
        request = pb.ExplainRequest(images=[image], layer="conv5", top_k=5, **explained)
        return [c.channel for c in vision.Explain(request, timeout=60).results[0].channels]

    first, second = ranking(class_label=labels[0]), ranking(class_label=labels[1])
    assert first != second
    assert ranking(class_index=1) == second
    peak = vision.Explain(pb.ExplainRequest(images=[image], layer="conv5", top_k=5), timeout=60).results[0]
    assert not peak.HasField("explained_class") and all(c.contribution == 0 for c in peak.channels)


@pytest.mark.parametrize(
    ("explained", "words"),
    [
        ({"class_label": "dodecahedron"}, ("'dodecahedron'", "not a label", "circle, square")),
        ({"class_index": 8}, ("class index 8", "8 classes", "0 to 7")),
    ],
)
def test_a_class_the_model_does_not_have_is_refused(vision, explained: dict, words: tuple[str, ...]) -> None:
    image = raw_image(make_scenes(1, 64, SEED)[0].image)
    with pytest.raises(grpc.RpcError) as raised:
        vision.Explain(pb.ExplainRequest(images=[image], top_k=1, **explained), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(word in raised.value.details() for word in words), raised.value.details()
    assert len(vision.Explain(pb.ExplainRequest(images=[image], top_k=1, class_index=0), timeout=30).results) == 1


def test_a_model_from_before_the_class_mode_serves_peaks_and_refuses_a_class(vision) -> None:
    image = raw_image(make_scenes(1, 64, SEED)[0].image)
    old, new = (pb.ModelRef(name=name) for name in (OLD_MODEL, MODEL))
    answers = [vision.Explain(pb.ExplainRequest(model=m, images=[image], top_k=3), timeout=30) for m in (old, new)]
    assert answers[0].model.name == OLD_MODEL
    assert [c.channel for c in answers[0].results[0].channels] == [c.channel for c in answers[1].results[0].channels]
    with pytest.raises(grpc.RpcError) as raised:
        vision.Explain(pb.ExplainRequest(model=old, images=[image], class_index=0), timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no class mode" in raised.value.details() and "re-export" in raised.value.details()


def test_cli_explains_a_class(server: ServerProcess, labels: list[str], tmp_path: Path, capsys) -> None:
    scene = tmp_path / "scene.png"
    Image.fromarray(make_scenes(1, 64, SEED)[0].image).save(scene)
    argv = ["explain", str(scene), "--top-k", "2", "--class", labels[2], "--out", str(tmp_path / "out")]
    assert main([*argv, "--server", server.target, "--json"]) == 0
    (answer,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answer["class"]["label"] == labels[2] and answer["class"]["index"] == 2
    assert 0 < answer["class"]["score"] <= 1 and len(answer["channels"]) == 2
    contributions = [channel["contribution"] for channel in answer["channels"]]
    assert contributions == sorted(contributions, reverse=True)
    assert main(["explain", str(scene), "--class", "blob", "--out", str(tmp_path), "--server", server.target]) == 1
    assert "class 'blob' is not a label of model zfnet_small_explain" in capsys.readouterr().err
