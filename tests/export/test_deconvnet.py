"""ZF Net's DeconvNet (export/families/deconvnet.py) against an autograd reference, its receptive
fields, its unpooling against MaxUnpool2d, its class mode's contributions against autograd
(export/families/class_gradient.py), and its ONNX graph. Random weights: the construction does not
depend on training (the served, trained graph is checked in tests/serving/test_explain.py)."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from export import onnx as onnx_export
from export.families import alexnet, vgg
from export.families.class_gradient import average_pooling_matrix, class_head
from export.families.deconvnet import (
    DeconvNet,
    Stage,
    explained_layers,
    features_explain_graphs,
    stages_from_features,
    unpool,
)
from export.families.zfnet import SMALL, ZFNet, deconvnet_stages, explain_graphs
from export.train import set_threads
from tests.export.deconvnet_reference import (
    class_contributions,
    features_tops,
    layer_tops,
    project,
    receptive_field,
    zfnet_contributions,
)

SIDE = SMALL.image_size
LABELS = tuple(f"class_{i}" for i in range(SMALL.num_classes))


def deconvnet(model: nn.Module, stages: tuple[Stage, ...], side: int) -> DeconvNet:
    return DeconvNet(stages, class_head(model, explained_layers(stages, side)[-1].side), side).eval()


def column(rows: int, value: int) -> torch.Tensor:
    return torch.full((rows, 1), value, dtype=torch.int64)


@pytest.fixture(scope="module")
def model() -> ZFNet:  # random weights, fixed
    set_threads()  # one thread, as the export: more only contend on a busy machine
    torch.manual_seed(0)
    return ZFNet(SMALL).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def deconvnet_rows(
    model: ZFNet, images: torch.Tensor, layer: int, rank: int, target: int = -1
) -> tuple[torch.Tensor, ...]:
    rows = len(images)
    with torch.no_grad():
        return deconvnet(model, deconvnet_stages(model), SIDE)(
            images, column(rows, layer), column(rows, rank), column(rows, target)
        )


@pytest.mark.parametrize("layer", [1, 2, 3, 4, 5])
def test_projection_equals_the_autograd_reference(model: ZFNet, images: torch.Tensor, layer: int) -> None:
    for rank in (0, 3):
        projection, channel, activation, position, contribution, _ = deconvnet_rows(model, images, layer, rank)
        assert not contribution.any()  # by peak: no class, no contribution
        for row, image in enumerate(images):
            expected = project(functools.partial(layer_tops, model), image, layer, rank)
            assert int(channel[row]) == expected.channel and tuple(position[row].tolist()) == expected.position
            assert float(activation[row]) == pytest.approx(expected.activation, rel=1e-5)
            scale = float(expected.pixels.abs().max())
            assert scale > 0  # a strong activation projects to something
            assert torch.allclose(projection[row], expected.pixels, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_projection_is_zero_outside_the_receptive_field(model: ZFNet, images: torch.Tensor, layer: int) -> None:
    """Layers 1 and 2 see 11 and 43 of 64 pixels; layers 3 to 5 see (nearly) the whole image."""
    for rank in range(3):
        projection, _, _, position, _, _ = deconvnet_rows(model, images, layer, rank)
        for row in range(len(images)):
            y1, y2, x1, x2 = receptive_field(model, layer, *position[row].tolist())
            inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
            inside[max(y1, 0) : y2, max(x1, 0) : x2] = True
            assert inside.sum() < SIDE * SIDE / 2  # the field is a part of the image: the check can fail
            touched = projection[row].abs().amax(0) > 0
            assert touched.any() and not (touched & ~inside).any()


def test_receptive_fields_in_the_config_match_the_layer_geometry(model: ZFNet) -> None:
    for number, layer in enumerate(explained_layers(deconvnet_stages(model), SIDE), start=1):
        for y in range(layer.side):
            y1, y2, _, _ = receptive_field(model, number, y, 0)
            assert (y * layer.stride + layer.offset, y * layer.stride + layer.offset + layer.size) == (y1, y2)


def test_unpooling_puts_values_exactly_at_the_switches() -> None:
    """Against MaxPool2d(return_indices=True) + MaxUnpool2d; where overlapping windows chose the same
    switch, the unpooled value is their sum (the transpose of max pooling) where MaxUnpool2d keeps one."""
    maps = torch.randn(2, 4, 30, 30, generator=torch.Generator().manual_seed(2))
    pooled, switches = nn.MaxPool2d(3, 2, 1, return_indices=True)(maps)
    values = torch.rand(pooled.shape, generator=torch.Generator().manual_seed(3)) + 0.5  # all non-zero
    ours = unpool(values, switches, maps)
    reference = nn.MaxUnpool2d(3, 2, 1)(values, switches, output_size=maps.shape[-2:])
    windows = torch.zeros_like(maps).flatten(2).scatter_add(2, switches.flatten(2), torch.ones_like(values).flatten(2))
    windows = windows.view_as(maps)
    assert ((ours != 0) == (windows > 0)).all()  # non-zero exactly at the switch positions
    single = windows == 1
    assert single.sum() > 100 and (windows > 1).any()  # both cases occur
    assert torch.equal(ours[single], reference[single])
    assert torch.allclose(ours.sum((2, 3)), values.sum((2, 3)))  # shared switches hold every window's value


def test_exported_graph_matches_pytorch_and_batches(model: ZFNet, tmp_path: Path) -> None:
    (graph,) = explain_graphs(model, SMALL, 0, LABELS)
    path = tmp_path / "model.onnx"
    onnx_export.export_graph(graph, path)
    session = onnx_export.open_session(path)
    checks = onnx_export.graph_parity(graph, session)
    assert checks and all(check.passed for check in checks), [c for c in checks if not c.passed]
    case = graph.parity_cases[0].inputs
    whole = onnx_export.run_session(session, case)
    one = onnx_export.run_session(session, {name: array[3:4] for name, array in case.items()})
    assert np.allclose(one["projection"], whole["projection"][3:4], atol=1e-5)
    layers = json.loads(graph.parameters["explain_layers"])
    assert [layer["name"] for layer in layers] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [layer["channels"] for layer in layers] == list(SMALL.conv_widths)
    assert graph.labels == LABELS and {case.name for case in graph.parity_cases} >= {"real", "real_by_class"}


def test_without_the_class_mode_the_graph_is_the_peak_mode_alone(model: ZFNet, tmp_path: Path) -> None:
    """explain_by_class off (full configs' default: the head is most of their weights): no `class` input,
    no head in the graph, four outputs, and the same channels and projections as the class-mode graph's
    peak mode."""
    (with_class,) = explain_graphs(model, SMALL, 0, LABELS)
    (peak,) = explain_graphs(model, replace(SMALL, explain_by_class=False), 0, LABELS)
    assert [tensor.name for tensor in peak.inputs] == ["images", "layer", "rank"]
    assert [tensor.name for tensor in peak.outputs] == ["projection", "channel", "activation", "position"]
    assert peak.labels == () and "class" not in peak.parameters["input_ranges"]
    path = tmp_path / "peak.onnx"
    onnx_export.export_graph(peak, path)
    session = onnx_export.open_session(path)
    assert all(check.passed for check in onnx_export.graph_parity(peak, session))
    onnx_export.export_graph(with_class, tmp_path / "with_class.onnx")
    head_weights = sum(linear.weight.numel() for linear in model.classifier if isinstance(linear, nn.Linear))
    assert (tmp_path / "with_class.onnx").stat().st_size - path.stat().st_size >= 4 * head_weights  # float32
    case = peak.parity_cases[0].inputs
    ours = onnx_export.run_session(session, case)
    with torch.no_grad():
        theirs = with_class.module(
            *(torch.from_numpy(case[name]) for name in ("images", "layer", "rank")), column(len(case["images"]), -1)
        )
    assert np.array_equal(ours["channel"], theirs[1].numpy())
    assert np.allclose(ours["projection"], theirs[0].numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("builder", "config"), [(alexnet.SmallAlexNet, alexnet.SMALL), (vgg.SmallVGG, vgg.SMALL)], ids=["alexnet", "vgg"]
)
def test_the_construction_applies_to_alexnet_and_vgg(builder, config, tmp_path: Path) -> None:
    """Same DeconvNet over torchvision-style `features` (VGG's batch norms folded into their convolutions),
    against the autograd reference through the unfolded layers, and its exported graph's parity."""
    set_threads()
    torch.manual_seed(4)
    model = builder(config).eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # not the identity: folding shows
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0, 0.1)
        norm.running_mean.normal_(0, 0.1)
        norm.running_var.uniform_(0.5, 1.5)
    stages = stages_from_features(model.features)
    side = config.image_size
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(5))
    network = deconvnet(model, stages, side)
    for layer in range(1, len(stages) + 1):
        with torch.no_grad():
            projection, channel, activation, *_ = network(images, column(2, layer), column(2, 0), column(2, -1))
        for row, image in enumerate(images):
            expected = project(functools.partial(features_tops, model.features), image, layer, 0)
            assert int(channel[row]) == expected.channel
            assert float(activation[row]) == pytest.approx(expected.activation, rel=1e-4)
            scale = float(expected.pixels.abs().max())
            assert torch.allclose(projection[row], expected.pixels, atol=1e-4 * scale, rtol=0)
    (graph,) = features_explain_graphs(model, config, 0, LABELS)
    onnx_export.export_graph(graph, tmp_path / "model.onnx")
    checks = onnx_export.graph_parity(graph, onnx_export.open_session(tmp_path / "model.onnx"))
    assert all(check.passed for check in checks), [c for c in checks if not c.passed]


@pytest.mark.parametrize("layer", [1, 2, 3, 4, 5])
def test_class_mode_ranks_channels_by_their_autograd_contribution(
    model: ZFNet, images: torch.Tensor, layer: int
) -> None:
    """Gradient x activation per channel, against torch.autograd through ZF Net's own classifier; the chosen
    channel is then projected exactly as the peak mode projects it."""
    for target in (0, 7):
        for rank in (0, 2):
            projection, channel, activation, position, contribution, logits = deconvnet_rows(
                model, images, layer, rank, target
            )
            for row, image in enumerate(images):
                reference, reference_logits = zfnet_contributions(model, image, target)
                assert torch.allclose(logits[row], reference_logits, atol=1e-5)
                assert torch.allclose(reference_logits, model(image[None])[0].detach(), atol=1e-5)  # the model's
                scores = reference[layer - 1]
                order = sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c))
                assert int(channel[row]) == order[rank]
                assert float(contribution[row]) == pytest.approx(float(scores[order[rank]]), rel=1e-4, abs=1e-6)
                # The same channel in peak mode (one image alone: another batch, float sums in another order).
                with torch.no_grad():
                    maxima = [float(p) for p in layer_tops(model, image[None])[layer - 1][0].flatten(1).amax(1)]
                by_peak = sorted(range(len(maxima)), key=lambda c: (-maxima[c], c)).index(order[rank])
                expected = deconvnet_rows(model, image[None], layer, by_peak)
                assert int(expected[1]) == order[rank] and torch.equal(position[row], expected[3][0])
                assert float(activation[row]) == pytest.approx(float(expected[2]), rel=1e-5)
                scale = float(expected[0].abs().max())
                assert torch.allclose(projection[row], expected[0][0], atol=1e-5 * scale, rtol=0)


def test_two_classes_rank_the_channels_differently(model: ZFNet, images: torch.Tensor) -> None:
    first = deconvnet_rows(model, images, 5, 0, 0)
    second = deconvnet_rows(model, images, 5, 0, 1)
    assert not torch.equal(first[1], second[1])  # another class, another most contributing channel


@pytest.mark.parametrize("kind", ["alexnet_torchvision", "vgg_small"])
def test_class_mode_covers_torchvision_heads(kind: str) -> None:
    """torchvision's AlexNet layout at 64 x 64 (its adaptive pool spreads the 1 x 1 map to 6 x 6: the pooling's
    transpose is not the identity) and the small VGG (batch norms folded into the convolutions)."""
    set_threads()
    torch.manual_seed(6)
    if kind == "vgg_small":
        model: nn.Module = vgg.SmallVGG(vgg.SMALL).eval()
        side = vgg.SMALL.image_size
    else:
        model, side = torchvision.models.alexnet(num_classes=10).eval(), 64
    features = model.features
    stages = stages_from_features(features)
    network = deconvnet(model, stages, side)
    pool = getattr(model, "avgpool", nn.Identity())
    image = torch.randn(3, side, side, generator=torch.Generator().manual_seed(7))
    reference, logits = class_contributions(
        functools.partial(features_tops, features, relu=torch.relu),
        lambda top: model.classifier(torch.flatten(pool(top), 1)),
        image,
        3,
    )
    assert torch.allclose(logits, model(image[None])[0].detach(), atol=1e-5)
    for layer in range(1, len(stages) + 1):
        with torch.no_grad():
            _, channel, _, _, contribution, ours = network(image[None], column(1, layer), column(1, 0), column(1, 3))
        scores = reference[layer - 1]
        assert int(channel) == int(scores.argmax()) and scores.max() > 0
        assert float(contribution) == pytest.approx(float(scores.max()), rel=1e-4)
        assert torch.allclose(ours[0], logits, atol=1e-5)


@pytest.mark.parametrize(("side", "pooled"), [(1, 6), (13, 6), (5, 3), (7, 7)])
def test_the_pooling_matrix_is_adaptive_average_pooling(side: int, pooled: int) -> None:
    maps = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(8))
    ours = (maps.flatten(2) @ average_pooling_matrix(side, pooled)).view(2, 4, pooled, pooled)
    assert torch.allclose(ours, nn.AdaptiveAvgPool2d(pooled)(maps), atol=1e-6)


def test_heads_the_class_mode_does_not_cover_are_refused(model: ZFNet) -> None:
    other = ZFNet(SMALL).eval()
    other.classifier[2] = nn.Tanh()
    with pytest.raises(ValueError, match="does not cover Tanh"):
        explain_graphs(other, SMALL, 0, LABELS)
    other = ZFNet(SMALL).eval()
    other.forward = lambda x: 2 * ZFNet.forward(other, x)  # type: ignore[method-assign]  # not its classifier
    with pytest.raises(ValueError, match="not its classifier over its last explained layer"):
        explain_graphs(other, SMALL, 0, LABELS)
