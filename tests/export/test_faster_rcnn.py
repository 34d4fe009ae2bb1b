"""Faster R-CNN family: grouped NMS semantics, the batch-friendly export forward against torchvision's
eval forward, ONNX export at several batch sizes with parity, torchvision checkpoint loading, quality.

Untrained detectors give near-uniform scores (every class ~1/(C+1)), where ranks are ties and parity
means nothing; ``liven`` gives random weights realistic activations instead: BatchNorm statistics
measured on scenes and a sharper predictor, so detections have distinct scores and real boxes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from export import onnx as onnx_export
from export.averaging import reestimate_batch_norm
from export.families import get_family
from export.families.base import WeightsError
from export.families.detection.agreement import compare_detections, unpad
from export.families.detection.batched import BatchedFasterRCNN
from export.families.detection.nms import grouped_nms
from export.families.faster_rcnn import (
    FULL_VARIANTS,
    MAP_THRESHOLD,
    SMALL,
    architecture_of,
    input_size,
    normalise_pixels,
    scene_pixels,
    served_inputs,
    served_preprocessing,
    torchvision_detections,
)
from export.pipeline import read_state_dict

FAMILY = get_family("faster_rcnn")


@torch.no_grad()
def liven(detector: FasterRCNN, seed: int = 0) -> FasterRCNN:
    """Random weights with measured BatchNorm statistics and a predictor sharp enough to rank boxes."""
    torch.manual_seed(seed)
    side = input_size(detector)
    pixels = torch.from_numpy(scene_pixels(4, side, seed)).permute(0, 3, 1, 2).float().div(255)
    reestimate_batch_norm(detector.backbone, [detector.transform(list(pixels))[0].tensors])
    detector.eval()
    predictor = detector.roi_heads.box_predictor
    predictor.cls_score.weight.normal_(0, 0.3)
    predictor.bbox_pred.weight.normal_(0, 0.005)
    detector.rpn.head.cls_logits.weight.normal_(0, 0.5)
    return detector


def _detections(outputs: tuple[torch.Tensor, ...]) -> list:
    return unpad(*(tensor.numpy() for tensor in outputs))


@pytest.fixture(scope="module")
def small_detector() -> FasterRCNN:
    return liven(FAMILY.build(SMALL))


def test_grouped_nms_matches_torchvision_batched_nms_per_group() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 60, 2, generator=generator) * 80
    boxes = torch.cat([corners, corners + 5 + torch.rand(3, 60, 2, generator=generator) * 30], dim=2)
    scores = torch.rand(3, 4, 60, generator=generator)
    scores[:, :, ::7] = -1.0  # filtered out by the score threshold
    kept = grouped_nms(boxes, scores, 0.5, -0.5)
    for group in range(3):
        valid = scores[group] > -0.5  # (classes, boxes)
        cls, index = torch.nonzero(valid, as_tuple=True)
        keep = torchvision.ops.batched_nms(boxes[group, index], scores[group, cls, index], cls, 0.5)
        expected = {(int(cls[k]), int(index[k])) for k in keep}
        mine = {(int(row[1]), int(row[2])) for row in kept if int(row[0]) == group}
        assert mine == expected


def test_export_forward_equals_torchvision_eval_forward(small_detector: FasterRCNN) -> None:
    side = input_size(small_detector)
    pixels = scene_pixels(3, side, seed=1)
    transform = small_detector.transform
    with torch.no_grad():
        outputs = BatchedFasterRCNN(small_detector)(
            torch.from_numpy(normalise_pixels(pixels, transform.image_mean, transform.image_std))
        )
    agreement = compare_detections(
        torchvision_detections(small_detector, pixels),
        _detections(outputs),
        max_detections=small_detector.roi_heads.detections_per_img,
        score_threshold=small_detector.roi_heads.score_thresh,
    )
    assert agreement.paired > 10  # the livened detector really detects
    assert agreement.unpaired == 0 and agreement.max_box_abs < 1e-4, agreement.describe()


def test_outputs_follow_the_detect_contract(small_detector: FasterRCNN) -> None:
    side = input_size(small_detector)
    with torch.no_grad():
        boxes, scores, labels, counts = BatchedFasterRCNN(small_detector)(torch.randn(2, 3, side, side))
    k = small_detector.roi_heads.detections_per_img
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.shape == (2, k) and counts.shape == (2, 1)
    assert labels.dtype == torch.int64 and counts.dtype == torch.int64
    for image in range(2):
        n = int(counts[image])
        assert torch.all(scores[image, :n] > 0) and torch.all(scores[image, n:] == 0)
        assert torch.all(boxes[image, n:] == 0)
        assert torch.all(scores[image, :-1] >= scores[image, 1:])
        assert torch.all((boxes[image, :n] >= 0) & (boxes[image, :n] <= side))
        assert torch.all((labels[image, :n] >= 0) & (labels[image, :n] < SMALL.small.num_classes))


def _export_and_check(detector: FasterRCNN, config, path: Path) -> tuple:
    graph = FAMILY.graphs(detector, config, seed=0)[0]
    onnx_export.export_graph(graph, path)  # runs onnx.checker (full_check)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert [n.name for n in model.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    session = onnx_export.open_session(path)
    parity = onnx_export.graph_parity(graph, session)
    system = FAMILY.system_parity(detector, config, [graph], lambda _, inputs: onnx_export.run_session(session, inputs))
    return graph, session, parity, system


def test_small_export_has_dynamic_batch_and_parity(small_detector: FasterRCNN, tmp_path: Path) -> None:
    graph, session, parity, system = _export_and_check(small_detector, SMALL, tmp_path / "model.onnx")
    assert all(check.passed for check in parity), [c for c in parity if not c.passed]
    assert [c.name for c in system] == ["real/detections", "random/detections"] + [
        f"torchvision_eval_vs_onnx/batch{b}" for b in (1, 2, 3, 8)
    ]
    assert all(check.passed for check in system), [(c.name, c.detail) for c in system if not c.passed]
    # The traced batch was 3: batches 1, 2, 3 and 8 all run and agree with the export forward in PyTorch.
    side = input_size(small_detector)
    transform = small_detector.transform
    for batch in (1, 2, 3, 8):
        images = normalise_pixels(scene_pixels(batch, side, seed=10 + batch), transform.image_mean, transform.image_std)
        low, high = json.loads(graph.parameters["input_ranges"])["images"]  # the server refuses values outside
        assert low <= images.min() and images.max() <= high
        out = onnx_export.run_session(session, {"images": images})
        assert out["boxes"].shape == (batch, small_detector.roi_heads.detections_per_img, 4)
        with torch.no_grad():
            expected = graph.module(torch.from_numpy(images))
        agreement = compare_detections(
            _detections(expected),
            unpad(out["boxes"], out["scores"], out["labels"], out["num_detections"]),
            max_detections=small_detector.roi_heads.detections_per_img,
            score_threshold=small_detector.roi_heads.score_thresh,
        )
        assert agreement.passed and agreement.paired > 0, agreement.describe()


@pytest.mark.parametrize("architecture", ["resnet50_fpn", "mobilenet_v3_large_fpn"])
def test_torchvision_state_dict_loads_as_is(architecture: str, tmp_path: Path) -> None:
    source = torchvision.models.detection.__dict__[f"fasterrcnn_{architecture}"](
        weights=None, weights_backbone=None, num_classes=5
    ).eval()
    path = tmp_path / "detector.pth"
    torch.save(source.state_dict(), path)
    state_dict = read_state_dict(path, "faster_rcnn")  # weights_only=True
    assert architecture_of(state_dict) == architecture
    # The user's checkpoint decides the architecture and the class count, whatever "full" defaults to.
    loaded = FAMILY.load(FAMILY.build(FULL_VARIANTS["resnet50_fpn"]), FULL_VARIANTS["resnet50_fpn"], state_dict)
    assert loaded.roi_heads.box_predictor.cls_score.out_features == 5
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    graph = FAMILY.graphs(loaded, FULL_VARIANTS["resnet50_fpn"], seed=0)[0]
    assert graph.labels == ("class_1", "class_2", "class_3", "class_4")


def test_checkpoint_of_a_frozen_batchnorm_backbone_loads(tmp_path: Path) -> None:
    # torchvision's released checkpoints come from a FrozenBatchNorm2d backbone: no num_batches_tracked.
    config = FULL_VARIANTS["mobilenet_v3_large_320_fpn"]
    source = liven(FAMILY.build(config))
    released = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(released, tmp_path / "released.pth")
    loaded = FAMILY.load(FAMILY.build(config), config, read_state_dict(tmp_path / "released.pth", "faster_rcnn"))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in loaded.backbone.body.modules())
    # FrozenBatchNorm2d folds the statistics into a scale and shift: equal up to float rounding.
    pixels = scene_pixels(1, 320, seed=2)
    agreement = compare_detections(
        torchvision_detections(source, pixels),
        torchvision_detections(loaded, pixels),
        max_detections=source.roi_heads.detections_per_img,
        score_threshold=source.roi_heads.score_thresh,
    )
    assert agreement.passed and agreement.paired > 10, agreement.describe()


def test_coco_checkpoint_gets_coco_labels() -> None:
    detector = FAMILY.build(FULL_VARIANTS["mobilenet_v3_large_320_fpn"])
    labels = FAMILY.graphs(detector, FULL_VARIANTS["mobilenet_v3_large_320_fpn"], seed=0)[0].labels
    assert len(labels) == 90 and labels[0] == "person"


def test_non_detector_weights_are_refused() -> None:
    classifier = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(WeightsError, match="not a torchvision Faster R-CNN"):
        FAMILY.load(FAMILY.build(FULL_VARIANTS["resnet50_fpn"]), FULL_VARIANTS["resnet50_fpn"], classifier)


def test_smoke_training_updates_weights_and_returns_eval_mode() -> None:
    tiny = replace(SMALL, train_objects=(2,), train_scenes_per_count=8, recipe=replace(SMALL.recipe, epochs=1))
    model = FAMILY.build(tiny)
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    trained = FAMILY.train(model, tiny, seed=0)
    assert not trained.training
    assert not torch.equal(before, trained.roi_heads.box_predictor.cls_score.weight)


def test_trained_small_detector_reaches_map_threshold(small_repository: Path) -> None:
    report = json.loads((small_repository / "faster_rcnn_small" / "1" / "export_report.json").read_text())
    assert report["quality"]["metric"] == "mAP@0.5"
    assert report["quality"]["value"] >= MAP_THRESHOLD, report["quality"]
    assert report["parity"]["passed"]
    names = {check["name"] for check in report["parity"]["checks"]}
    assert {"real/detections", "random/detections"} <= names
    assert {f"torchvision_eval_vs_onnx/batch{b}" for b in (1, 2, 3, 8)} <= names


@pytest.mark.slow
def test_full_mobilenet_exports_with_dynamic_batch(tmp_path: Path) -> None:
    """Full-size export at batch 1, 2 and 3 against torchvision's eval forward.

    Weaker than the small model's check, knowingly: with random weights (no checkpoint can be downloaded
    here) ONNX Runtime's and PyTorch's kernels already differ by ~5e-6 relative in the FPN features and
    1e-4 in RPN logits (measured), and a random head turns that into rank swaps and NMS flips among its
    near-tied detections. So the bound is most detections paired and their boxes within 1e-2 relative;
    a broken level mapping, batch index or NMS layout pairs almost nothing.
    """
    config = FULL_VARIANTS["mobilenet_v3_large_320_fpn"]
    torch.manual_seed(0)  # the built weights too, not only liven's: unseeded weights made this test flaky
    detector = liven(FAMILY.build(config))
    graph = FAMILY.graphs(detector, config, seed=0)[0]
    path = tmp_path / "model.onnx"
    onnx_export.export_graph(graph, path)  # onnx.checker, full_check
    session = onnx_export.open_session(path)
    preprocessing = served_preprocessing(detector, config)  # 320 px scenes: resized 1:1, no box mapping
    for batch in (1, 2, 3):
        pixels = scene_pixels(batch, 320, seed=batch)
        out = onnx_export.run_session(session, served_inputs(list(pixels), preprocessing))
        assert out["boxes"].shape == (batch, 100, 4) and out["num_detections"].shape == (batch, 1)
        agreement = compare_detections(
            torchvision_detections(detector, pixels),
            unpad(out["boxes"], out["scores"], out["labels"], out["num_detections"]),
            max_detections=detector.roi_heads.detections_per_img,
            score_threshold=detector.roi_heads.score_thresh,
        )
        assert agreement.paired >= 0.9 * (agreement.paired + agreement.unpaired), agreement.describe()
        assert agreement.max_box_rel <= 1e-2, agreement.describe()
