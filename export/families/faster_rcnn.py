"""Faster R-CNN (Ren et al. 2015): task `detect`.

small: the paper's pipeline on one backbone feature map (RPN with 3 x 3 anchors per cell -> RoIAlign ->
two-FC box head -> class scores + per-class box regression -> per-class NMS), trained from scratch on
synthetic multi-object scenes. full: torchvision's Faster R-CNN (ResNet-50 FPN, its v2, MobileNetV3-
Large FPN, or ``--variant mobilenet_v3_large_320_fpn``); ``load`` reads which one (and its class count) from
the checkpoint's keys, so any torchvision Faster R-CNN state_dict loads as it is.

Full configs serve torchvision's own detector preprocessing (``GeneralizedRCNNTransform``): the shorter
side scaled to ``min_size`` unless the longer one would pass ``max_size``, bilinear without antialiasing,
read from the built model. The exported graph has a fixed input size, so the image is letterboxed into a
square canvas of max_size rounded up to 32 (top-left, zero padding after normalisation, as torchvision pads
a batch) and the graph takes each image's extent (``image_sizes``) to clip proposals and boxes as
torchvision does; the server maps boxes back to the original image by the resize ratios. The price of
one fixed shape: a landscape photo pays for the canvas's unused rows (docs/EXPORT.md).

Export: torchvision's eval forward only exports at the batch size it was traced with, so the served graph
is detection.batched.BatchedFasterRCNN, a batch-friendly forward over the same modules and weights
(see docs/EXPORT.md, "Faster R-CNN export").
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
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
    IMAGE_SIZES,
    IMAGES,
    INPUT_RANGES_PARAMETER,
    LABELS,
    NUM_DETECTIONS,
    PREPROCESSING_PARAMETER,
    SCORES,
)
from contract.preprocessing import (
    LETTERBOX,
    Preprocessing,
    PreprocessingError,
    overridden,
    placement,
    preprocess,
)
from contract.scenes import SHAPES, make_scenes, stack_images
from contract.tensors import TensorSpec
from export.data.photos import photos
from export.data.tensors import evaluation_split
from export.families import register_family
from export.families.base import (
    ExportError,
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
    read_labels,
)
from export.families.detection.agreement import (
    BOX_RTOL,
    REFERENCE_SCORE_ATOL,
    SCORE_ATOL,
    Agreement,
    compare_detections,
    unpad,
)
from export.families.detection.batched import BatchedFasterRCNN
from export.families.detection.mean_ap import ImageDetections
from export.families.detection.small import SmallDetectorShape, build_small
from export.families.detection.training import evaluate_detector, scene_set, train_detector
from export.families.narrow import narrow
from export.families.reference import PREFIX as REFERENCE_PREFIX
from export.train import SGDRecipe, set_threads
from protos.inference import model_config_pb2 as mc

MAP_THRESHOLD = 0.90  # seeds 0-4 score 0.997-0.998 (EXPORT_FAMILIES.md, "Quality across seeds")
# Row-by-row differences of the padded outputs are recorded but do not decide: two detections whose
# scores differ by 1e-7 may swap rows between runtimes. system_parity decides, pairing detections
# (detection.agreement): ONNX vs the export forward on the parity cases, and vs torchvision's eval forward.
RECORDED_ONLY = Tolerance(atol=float("inf"))
RECORDED_ONLY_OUTPUTS = {name: RECORDED_ONLY for name in (BOXES, SCORES, LABELS, NUM_DETECTIONS)}


@dataclass(frozen=True)
class FasterRCNNConfig(FamilyConfig):
    """architecture: "small" or a torchvision builder name (see TORCHVISION_BUILDERS).

    small / recipe / train_objects / train_scenes_per_count: the small detector's shape and training
    (scenes with each object count in train_objects). eval_objects / eval_scenes_per_count: held-out set.
    parity_batches: batch sizes at which the exported graph is checked against torchvision's eval forward
        (small; full configs are checked on photos, see ``photo_agreement``).
    preprocess: ``--preprocess`` overrides of the letterbox (full); labels_file: ``--labels``.
    """

    architecture: str
    small: SmallDetectorShape | None = None
    recipe: SGDRecipe | None = None
    train_objects: tuple[int, ...] = (2, 3, 4)
    train_scenes_per_count: int = 800
    eval_objects: tuple[int, ...] = (2, 3, 4)
    eval_scenes_per_count: int = 100
    parity_batches: tuple[int, ...] = (1, 2, 3, 8)
    preprocess: tuple[tuple[str, str], ...] = field(default=(), kw_only=True)
    labels_file: str | None = field(default=None, kw_only=True)


TORCHVISION_BUILDERS: Mapping[str, Callable[..., FasterRCNN]] = {
    "resnet50_fpn": fasterrcnn_resnet50_fpn,
    "resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2,
    "mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
    "mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn,
}
COCO_CLASSES = 91  # torchvision's COCO heads: background + 90 category ids (some "N/A")
PHOTOS = 8  # reference-agreement photos of a full export (each runs the detector twice)
# Photos pass with this share of detections paired (boxes within the agreement's bound): torchvision's own
# answer depends on how an image is padded, and a resize that differs in the 6th digit can move a detection
# across a top-n or NMS cut-off that is no near-tie of scores (the classifiers' top-5 bar, for detections).
PAIRED_SHARE = 0.95

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


def class_names(num_classes: int, labels_file: str | None = None) -> tuple[str, ...]:
    """labels.txt lines (background excluded): ``--labels``, COCO's names for a 91-class head, else class_<id>."""
    if labels_file is not None:
        return read_labels(labels_file, num_classes - 1)
    if num_classes == COCO_CLASSES:
        return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])
    return tuple(f"class_{index}" for index in range(1, num_classes))


def input_size(model: FasterRCNN) -> int:
    """The small config's square export size: torchvision's transform leaves a min_size x min_size image
    as it is."""
    return int(model.transform.min_size[0])


def served_preprocessing(model: FasterRCNN, config: FasterRCNNConfig) -> Preprocessing:
    """A full config's letterbox (module docstring), from the model's own transform and ``--preprocess``;
    the model's transform then follows any size override, so the torchvision reference resizes as served."""
    transform = model.transform
    overrides = dict(config.preprocess)
    divisible = int(transform.size_divisible)
    try:
        max_size = int(overrides.get("max_size", transform.max_size))
        canvas = math.ceil(max_size / divisible) * divisible
        defaults = {
            "size": [canvas, canvas],
            "mean": list(transform.image_mean),
            "std": list(transform.image_std),
            "mode": LETTERBOX,
            "resize": int(transform.min_size[0]),
            "max_size": int(transform.max_size),
            "antialias": False,
            "size_divisible": divisible,
        }
        chosen = overridden(defaults, overrides)
    except (PreprocessingError, ValueError) as error:
        raise ExportError(f"faster_rcnn {config.name}: --preprocess: {error}") from None
    if chosen.mode == "shorter_side":
        raise ExportError(f"faster_rcnn {config.name}: --preprocess mode: a detector takes letterbox or square")
    if chosen.mode == LETTERBOX:
        transform.min_size, transform.max_size = (chosen.resize,), chosen.max_size
    return chosen


class FasterRCNNFamily:
    """Registry entry: small trains on synthetic scenes; full loads torchvision Faster R-CNN weights."""

    name = "faster_rcnn"
    task = DETECT
    configs: Mapping[str, FasterRCNNConfig] = {"small": SMALL, "full": FULL}
    variants: Mapping[str, FasterRCNNConfig] = FULL_VARIANTS

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
        own = _own(config)
        if own.small is not None:
            return (self._small_graph(_detector(model).eval(), own, seed),)
        return (self._full_graph(_detector(model).eval(), own, seed),)

    def _small_graph(self, detector: FasterRCNN, config: FasterRCNNConfig, seed: int) -> GraphSpec:
        side = input_size(detector)
        transform = detector.transform
        noise = np.random.default_rng(seed).integers(0, 256, size=(2, side, side, 3), dtype=np.uint8)
        real = normalise_pixels(scene_pixels(3, side, seed), transform.image_mean, transform.image_std)
        random = normalise_pixels(noise, transform.image_mean, transform.image_std)
        return GraphSpec(
            module=BatchedFasterRCNN(detector),
            inputs=(TensorSpec(IMAGES, (3, side, side)),),
            outputs=_outputs(detector),
            tolerances=RECORDED_ONLY_OUTPUTS,
            parity_cases=(ParityCase("real", {IMAGES: real}), ParityCase("random", {IMAGES: random})),
            max_batch_size=config.max_batch_size,
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
            labels=SHAPES,
        )

    def _full_graph(self, detector: FasterRCNN, config: FasterRCNNConfig, seed: int) -> GraphSpec:
        """The letterbox graph (images + image_sizes), or images alone for a ``--preprocess mode=square``."""
        preprocessing = served_preprocessing(detector, config)
        height, width = preprocessing.size
        ranges = {IMAGES: pixel_range(preprocessing.mean, preprocessing.std)}
        inputs = [TensorSpec(IMAGES, (3, height, width))]
        if preprocessing.mode == LETTERBOX:  # the canvas follows the batch's largest image
            inputs = [TensorSpec(IMAGES, (3, -1, -1)), TensorSpec(IMAGE_SIZES, (2,))]
            ranges[IMAGE_SIZES] = (1.0, float(max(height, width)))
        scenes = [scene.image for scene in make_scenes(2, max(preprocessing.resize, 64), seed, objects=3, split="test")]
        # Low-contrast noise: full-range noise saturates a livened detector's scores at 1.0, all tied.
        noise = np.random.default_rng(seed).integers(96, 160, size=(2, height // 2, width, 3), dtype=np.uint8)
        num_classes = detector.roi_heads.box_predictor.cls_score.out_features
        return GraphSpec(
            module=BatchedFasterRCNN(detector),
            inputs=tuple(inputs),
            outputs=_outputs(detector),
            tolerances=RECORDED_ONLY_OUTPUTS,
            parity_cases=(
                ParityCase("real", served_inputs(scenes, preprocessing)),
                ParityCase("random", served_inputs(list(noise), preprocessing)),
            ),
            max_batch_size=config.max_batch_size,
            task=self.task,
            parameters={
                PREPROCESSING_PARAMETER: preprocessing.to_json(),
                INPUT_RANGES_PARAMETER: input_ranges_parameter(ranges),
            },
            labels=class_names(num_classes, config.labels_file),
        )

    def system_parity(
        self, model: nn.Module, config: FamilyConfig, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        """Detection-aware parity: the ONNX graph against the export forward in PyTorch on the graph's parity
        cases; then against torchvision's own eval forward, image by image: small configs at several batch
        sizes of scenes, full configs on photos through the served preprocessing (``photo_agreement``)."""
        detector = _detector(model).eval()
        graph = graphs[0]
        checks = []
        for case in graph.parity_cases:
            with torch.no_grad():
                expected_outputs = graph.module(*(torch.from_numpy(case.inputs[spec.name]) for spec in graph.inputs))
            out = run("", case.inputs)
            agreement = _agreement(detector, unpad(*(tensor.numpy() for tensor in expected_outputs)), _unpadded(out))
            checks.append(_check(f"{case.name}/detections", agreement))
        own = _own(config)
        if own.small is None:
            return (*checks, *photo_agreement(detector, served_preprocessing(detector, own), run, seed=0))
        side = input_size(detector)
        transform = detector.transform
        for batch in own.parity_batches:
            pixels = scene_pixels(batch, side, seed=batch)
            expected = torchvision_detections(detector, pixels)
            out = run("", {IMAGES: normalise_pixels(pixels, transform.image_mean, transform.image_std)})
            agreement = _agreement(detector, expected, _unpadded(out))
            checks.append(_check(f"torchvision_eval_vs_onnx/batch{batch}", agreement))
        return tuple(checks)


def _outputs(detector: FasterRCNN) -> tuple[TensorSpec, ...]:
    max_detections = detector.roi_heads.detections_per_img
    return (
        TensorSpec(BOXES, (max_detections, 4)),
        TensorSpec(SCORES, (max_detections,)),
        TensorSpec(LABELS, (max_detections,), mc.TYPE_INT64, LABELS_FILE),
        TensorSpec(NUM_DETECTIONS, (1,), mc.TYPE_INT64),
    )


def served_inputs(images: Sequence[np.ndarray], preprocessing: Preprocessing) -> dict[str, np.ndarray]:
    """The graph's inputs for uint8 (H, W, 3) images of any size, as the server makes them."""
    batch, where = preprocess(images, preprocessing)
    inputs = {IMAGES: batch}
    if preprocessing.mode == LETTERBOX:
        inputs[IMAGE_SIZES] = np.array([place.resized for place in where], dtype=np.float32)
    return inputs


def photo_agreement(
    detector: FasterRCNN, preprocessing: Preprocessing, run: OnnxRunner, seed: int, count: int = PHOTOS
) -> tuple[ParityCheck, ...]:
    """Per photo (export.data.photos): torchvision's eval forward on the decoded image (its own transform,
    boxes in the photo's pixels) against decode + served preprocessing + ONNX + boxes mapped back."""
    checks = []
    for name, data in photos(count, seed):
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        expected = torchvision_detections(detector, pixels[None])
        inputs = served_inputs([pixels], preprocessing)
        out = run("", inputs)
        where = placement((pixels.shape[0], pixels.shape[1]), preprocessing)
        served = _unpadded({**out, BOXES: where.to_original(out[BOXES])})
        agreement = _agreement(detector, expected, served, REFERENCE_SCORE_ATOL)
        share = 1 - agreement.unexplained / max(1, agreement.paired + agreement.unpaired)
        passed = share >= PAIRED_SHARE and agreement.max_box_rel <= BOX_RTOL
        detail = f"{share:.1%} of detections agree (bar {PAIRED_SHARE:.0%}): {agreement.describe()}"
        checks.append(ParityCheck(REFERENCE_PREFIX + name, agreement.max_box_abs, passed, detail))
    return tuple(checks)


def _unpadded(outputs: Mapping[str, np.ndarray]) -> list[ImageDetections]:
    return unpad(outputs[BOXES], outputs[SCORES], outputs[LABELS], outputs[NUM_DETECTIONS])


def _agreement(
    detector: FasterRCNN,
    expected: Sequence[ImageDetections],
    actual: Sequence[ImageDetections],
    score_atol: float = SCORE_ATOL,
) -> Agreement:
    return compare_detections(
        expected,
        actual,
        max_detections=detector.roi_heads.detections_per_img,
        score_threshold=detector.roi_heads.score_thresh,
        score_atol=score_atol,
    )


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
