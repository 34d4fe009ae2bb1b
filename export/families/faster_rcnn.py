"""Faster R-CNN (Ren et al. 2015): task `detect`.

small: the paper's pipeline on one backbone feature map (RPN with 3 x 3 anchors per cell -> RoIAlign ->
two-FC box head -> class scores + per-class box regression -> per-class NMS), trained from scratch on
synthetic multi-object scenes. full: torchvision's Faster R-CNN (ResNet-50 FPN, its v2, or MobileNetV3-
Large FPN); ``load`` reads which one (and its class count) from the checkpoint's keys, so any torchvision
Faster R-CNN state_dict loads as it is.

Export: torchvision's eval forward only exports at the batch size it was traced with, so the served graph
is detection.batched.BatchedFasterRCNN, a batch-friendly forward over the same modules and weights
(see docs/EXPORT.md, "Faster R-CNN export").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.ops.misc import FrozenBatchNorm2d

from contract.model_config import LABELS_FILE
from contract.names import (
    BOXES,
    DETECT,
    IMAGES,
    INPUT_RANGES_PARAMETER,
    LABELS,
    NUM_DETECTIONS,
    PREPROCESSING_PARAMETER,
    SCORES,
)
from contract.scenes import SHAPES, make_scenes, stack_images
from contract.tensors import TensorSpec
from export.data.tensors import evaluation_split
from export.families import register_family
from export.families.base import (
    FamilyConfig,
    GraphSpec,
    OnnxRunner,
    ParityCase,
    ParityCheck,
    Quality,
    Tolerance,
    WeightsError,
    input_ranges_parameter,
    load_state_dict_strict,
    pixel_range,
    preprocessing_parameter,
)
from export.families.detection.agreement import Agreement, compare_detections, unpad
from export.families.detection.batched import BatchedFasterRCNN
from export.families.detection.mean_ap import ImageDetections
from export.families.detection.small import SmallDetectorShape, build_small
from export.families.detection.training import evaluate_detector, scene_set, train_detector
from export.families.narrow import narrow
from export.train import SGDRecipe, set_threads
from protos.inference import model_config_pb2 as mc

MAP_THRESHOLD = 0.80
# Row-by-row differences of the padded outputs are recorded but do not decide: two detections whose
# scores differ by 1e-7 may swap rows between runtimes. system_parity decides, pairing detections
# (detection.agreement): ONNX vs the export forward on the parity cases, and vs torchvision's eval forward.
RECORDED_ONLY = Tolerance(atol=float("inf"))


@dataclass(frozen=True)
class FasterRCNNConfig(FamilyConfig):
    """architecture: "small" or a torchvision builder name (see TORCHVISION_BUILDERS).

    small / recipe / train_objects / train_scenes_per_count: the small detector's shape and training
    (scenes with each object count in train_objects). eval_objects / eval_scenes_per_count: held-out set.
    parity_batches: batch sizes at which the exported graph is checked against torchvision's eval forward.
    """

    architecture: str
    small: SmallDetectorShape | None = None
    recipe: SGDRecipe | None = None
    train_objects: tuple[int, ...] = (2, 3, 4)
    train_scenes_per_count: int = 800
    eval_objects: tuple[int, ...] = (2, 3, 4)
    eval_scenes_per_count: int = 100
    parity_batches: tuple[int, ...] = (1, 2, 3, 8)


TORCHVISION_BUILDERS: Mapping[str, Callable[..., FasterRCNN]] = {
    "resnet50_fpn": fasterrcnn_resnet50_fpn,
    "resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2,
    "mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
    "mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn,
}
COCO_CLASSES = 91  # torchvision's COCO heads: background + 90 category ids (some "N/A")

SMALL = FasterRCNNConfig(
    name="small",
    trainable=True,
    max_batch_size=16,
    architecture="small",
    small=SmallDetectorShape(
        image_size=96,
        widths=(16, 32, 64),  # stride 8: a 12 x 12 map; objects span 3-5 cells
        anchor_sizes=(20, 28, 40),  # the scenes' objects are 19-38 px boxes at 96 px
        aspect_ratios=(0.5, 1.0, 2.0),
        representation=256,
        num_classes=len(SHAPES),
    ),
    # The paper's SGD (momentum 0.9, weight decay 1e-4 as torchvision's recipe), shortened: 1200 steps.
    # Measured: 6 epochs reach mAP@0.5 0.9996 on the held-out scenes (166 CPU-s); 4 keep a wide margin.
    recipe=SGDRecipe(epochs=4, batch_size=8, lr=0.04, weight_decay=1e-4),
)
FULL_VARIANTS: Mapping[str, FasterRCNNConfig] = {
    name: FasterRCNNConfig(name="full", trainable=False, max_batch_size=8, architecture=name, parity_batches=(1, 2))
    for name in TORCHVISION_BUILDERS
}
FULL = FULL_VARIANTS["resnet50_fpn"]


def build(config: FasterRCNNConfig, num_classes: int = COCO_CLASSES, frozen_norm: bool = False) -> FasterRCNN:
    """Random weights; full configs come from torchvision's builders without downloading anything.

    frozen_norm: the backbone's BatchNorm layers become FrozenBatchNorm2d, as torchvision builds the
    ResNet-50 / MobileNetV3 Faster R-CNN when it starts from pretrained weights (its released
    checkpoints have no ``num_batches_tracked`` keys).
    """
    if config.small is not None:
        return build_small(config.small)
    builder = TORCHVISION_BUILDERS[config.architecture]
    detector = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    if frozen_norm:
        _freeze_batch_norms(detector.backbone.body)
    return detector


def _freeze_batch_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batch_norms(child)


def has_frozen_norms(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for checkpoints of a backbone with frozen BatchNorm (no backbone num_batches_tracked keys)."""
    return not any(k.startswith("backbone.body.") and k.endswith(".num_batches_tracked") for k in state_dict)


def architecture_of(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which torchvision Faster R-CNN a state_dict belongs to, from its keys.

    MobileNetV3 checkpoints are read as the 800 px model (mobilenet_v3_large_fpn); the 320 px one has the
    same keys and differs only in input size and RPN top-n settings.
    """
    if "roi_heads.box_head.0.0.weight" in state_dict:
        return "resnet50_fpn_v2"  # conv box head
    if "backbone.body.layer1.0.conv1.weight" in state_dict:
        return "resnet50_fpn"
    if "backbone.body.0.0.weight" in state_dict:
        return "mobilenet_v3_large_fpn"
    raise WeightsError(
        "weights are not a torchvision Faster R-CNN state_dict (no ResNet-50 or MobileNetV3 backbone keys); "
        f"supported: {', '.join(TORCHVISION_BUILDERS)}"
    )


def class_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Classes of the box predictor (background included)."""
    weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if weight is None:
        raise WeightsError("weights have no roi_heads.box_predictor.cls_score.weight: not a Faster R-CNN")
    return int(weight.shape[0])


def class_names(num_classes: int) -> tuple[str, ...]:
    """labels.txt lines (background excluded): COCO's names for a 91-class head, else class_<id>."""
    if num_classes == COCO_CLASSES:
        return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])
    return tuple(f"class_{index}" for index in range(1, num_classes))


def input_size(model: FasterRCNN) -> int:
    """The square export size: torchvision's transform leaves a min_size x min_size image as it is."""
    return int(model.transform.min_size[0])


class FasterRCNNFamily:
    """Registry entry: small trains on synthetic scenes; full loads torchvision Faster R-CNN weights."""

    name = "faster_rcnn"
    task = DETECT
    configs: Mapping[str, FasterRCNNConfig] = {"small": SMALL, "full": FULL}

    def build(self, config: FamilyConfig) -> nn.Module:
        return build(_own(config))

    def train(self, model: nn.Module, config: FamilyConfig, seed: int) -> nn.Module:
        own = _own(config)
        if own.small is None or own.recipe is None:
            raise ValueError(f"faster_rcnn {own.name} is not trainable here")
        set_threads()
        torch.manual_seed(seed)
        data = scene_set(own.train_objects, own.train_scenes_per_count, own.small.image_size, seed, "train")
        return train_detector(_detector(model), data, own.recipe, seed, f"faster_rcnn_{own.name} train")

    def load(self, model: nn.Module, config: FamilyConfig, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        own = _own(config)
        if own.small is not None:
            return load_state_dict_strict(model, state_dict, f"faster_rcnn_{own.name}")
        variant = FULL_VARIANTS[architecture_of(state_dict)]
        if variant.architecture == "mobilenet_v3_large_fpn" and own.architecture == "mobilenet_v3_large_320_fpn":
            variant = own
        detector = build(variant, class_count(state_dict), frozen_norm=has_frozen_norms(state_dict))
        return load_state_dict_strict(detector, state_dict, "faster_rcnn_full")

    def evaluate(self, model: nn.Module, config: FamilyConfig, seed: int) -> Quality | None:
        """VOC mAP@0.5 on held-out multi-object scenes (small only)."""
        own = _own(config)
        if own.small is None:
            return None
        split = evaluation_split()
        data = scene_set(own.eval_objects, own.eval_scenes_per_count, own.small.image_size, seed, split)
        result = evaluate_detector(_detector(model), data)
        return Quality(
            metric="mAP@0.5",
            value=result.mean_ap,
            threshold=MAP_THRESHOLD,
            details={
                "per_class_ap": {SHAPES[cls]: ap for cls, ap in result.per_class.items()},
                "held_out_scenes": len(data.truths),
                "split": split,
                "objects_per_scene": list(own.eval_objects),
                "evaluation": "PASCAL VOC all-point interpolation, IoU >= 0.5",
            },
        )

    def graphs(self, model: nn.Module, config: FamilyConfig, seed: int) -> Sequence[GraphSpec]:
        detector = _detector(model).eval()
        side = input_size(detector)
        max_detections = detector.roi_heads.detections_per_img
        transform = detector.transform
        noise = np.random.default_rng(seed).integers(0, 256, size=(2, side, side, 3), dtype=np.uint8)
        real = normalise_pixels(scene_pixels(3, side, seed), transform.image_mean, transform.image_std)
        random = normalise_pixels(noise, transform.image_mean, transform.image_std)
        num_classes = detector.roi_heads.box_predictor.cls_score.out_features
        outputs = (
            TensorSpec(BOXES, (max_detections, 4)),
            TensorSpec(SCORES, (max_detections,)),
            TensorSpec(LABELS, (max_detections,), mc.TYPE_INT64, LABELS_FILE),
            TensorSpec(NUM_DETECTIONS, (1,), mc.TYPE_INT64),
        )
        return (
            GraphSpec(
                module=BatchedFasterRCNN(detector, (side, side)),
                inputs=(TensorSpec(IMAGES, (3, side, side)),),
                outputs=outputs,
                tolerances={tensor.name: RECORDED_ONLY for tensor in outputs},
                parity_cases=(ParityCase("real", {IMAGES: real}), ParityCase("random", {IMAGES: random})),
                max_batch_size=_own(config).max_batch_size,
                task=self.task,
                parameters={
                    PREPROCESSING_PARAMETER: preprocessing_parameter(
                        (side, side), transform.image_mean, transform.image_std
                    ),
                    # RoiAlign fails a whole batch on non-finite boxes, which NaN or huge inputs produce.
                    INPUT_RANGES_PARAMETER: input_ranges_parameter(
                        {IMAGES: pixel_range(transform.image_mean, transform.image_std)}
                    ),
                },
                labels=SHAPES if _own(config).small is not None else class_names(num_classes),
            ),
        )

    def system_parity(
        self, model: nn.Module, config: FamilyConfig, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        """Detection-aware parity: the ONNX graph against the export forward in PyTorch on the graph's parity
        cases, and at several batch sizes against torchvision's own eval forward, image by image."""
        detector = _detector(model).eval()
        side = input_size(detector)
        transform = detector.transform
        graph = graphs[0]
        checks = []
        for case in graph.parity_cases:
            with torch.no_grad():
                expected_outputs = graph.module(torch.from_numpy(case.inputs["images"]))
            out = run("", case.inputs)
            agreement = compare_detections(
                unpad(*(tensor.numpy() for tensor in expected_outputs)),
                unpad(out["boxes"], out["scores"], out["labels"], out["num_detections"]),
                max_detections=detector.roi_heads.detections_per_img,
                score_threshold=detector.roi_heads.score_thresh,
            )
            checks.append(_check(f"{case.name}/detections", agreement))
        for batch in _own(config).parity_batches:
            pixels = scene_pixels(batch, side, seed=batch)
            expected = torchvision_detections(detector, pixels)
            out = run("", {"images": normalise_pixels(pixels, transform.image_mean, transform.image_std)})
            actual = unpad(out["boxes"], out["scores"], out["labels"], out["num_detections"])
            agreement = compare_detections(
                expected,
                actual,
                max_detections=detector.roi_heads.detections_per_img,
                score_threshold=detector.roi_heads.score_thresh,
            )
            checks.append(_check(f"torchvision_eval_vs_onnx/batch{batch}", agreement))
        return tuple(checks)


def _check(name: str, agreement: Agreement) -> ParityCheck:
    """max_abs_diff = worst box coordinate difference (pixels) over paired detections."""
    return ParityCheck(
        name=name, max_abs_diff=agreement.max_box_abs, passed=agreement.passed, detail=agreement.describe()
    )


def scene_pixels(count: int, side: int, seed: int) -> np.ndarray:
    """uint8 [count, side, side, 3] held-out three-object scenes."""
    return stack_images(make_scenes(count, side, seed, objects=3, split="test"))


def normalise_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [N, S, S, 3] -> FP32 [N, 3, S, S] ``(x / 255 - mean) / std``, the served preprocessing."""
    scaled = pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255
    shift, scale = np.array(mean, np.float32)[:, None, None], np.array(std, np.float32)[:, None, None]
    return np.ascontiguousarray((scaled - shift) / scale, dtype=np.float32)


@torch.no_grad()
def torchvision_detections(detector: FasterRCNN, pixels: np.ndarray) -> list[ImageDetections]:
    """torchvision's eval forward (its own transform), one image at a time, on uint8 [N, S, S, 3] pixels."""
    detections = []
    for image in torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255):
        output = detector([image])[0]
        detections.append(
            ImageDetections(output["boxes"].numpy(), output["scores"].numpy(), output["labels"].numpy() - 1)
        )
    return detections


def _own(config: FamilyConfig) -> FasterRCNNConfig:
    return narrow(config, FasterRCNNConfig, "faster_rcnn")


def _detector(model: nn.Module) -> FasterRCNN:
    return narrow(model, FasterRCNN, "faster_rcnn")


register_family(FasterRCNNFamily())
