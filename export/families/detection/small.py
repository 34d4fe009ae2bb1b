"""The small Faster R-CNN: the paper's topology (one backbone feature map -> RPN -> RoIAlign -> class and
box heads -> NMS) at a width and resolution that train from scratch on two CPU cores in about two minutes.

Built from torchvision's own detection modules (FasterRCNN, AnchorGenerator, RPN, MultiScaleRoIAlign,
TwoMLPHead, FastRCNNPredictor), so training, torchvision's eval forward and the batch-friendly export
forward (batched.py) all run the same modules with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign


@dataclass(frozen=True)
class SmallDetectorShape:
    """Architecture of the small detector.

    image_size: square input side in pixels (a multiple of 32, so torchvision's transform never pads).
    widths: channels of the backbone stages; each stage = a stride-2 3x3 conv + a 3x3 conv (conv-BN-ReLU),
        so the single feature map has stride 2 ** len(widths).
    anchor_sizes / aspect_ratios: the RPN's anchors at every feature-map cell (the paper: 3 x 3).
    representation: width of the two fully connected layers of the box head.
    train_rois_per_image / train_positive_fraction: RoIs sampled per image for the head's loss, and the
        share of them overlapping an object.
    num_classes: object classes, background excluded (the model predicts num_classes + 1).
    """

    image_size: int
    widths: tuple[int, ...]
    anchor_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    representation: int
    num_classes: int
    roi_size: int = 7
    rpn_pre_nms_top_n: int = 300
    rpn_post_nms_top_n: int = 50
    detections_per_image: int = 20
    train_rois_per_image: int = 64
    train_positive_fraction: float = 0.5  # of sampled RoIs (torchvision: 0.25); more object signal per step
    sampling_ratio: int = 1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


def _conv(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallBackbone(nn.Sequential):
    """(B, 3, S, S) -> (B, widths[-1], S / 2**len(widths), S / 2**len(widths)); ``out_channels`` for FasterRCNN."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            layers += _conv(in_channels, width, 2) + _conv(width, width, 1)
            in_channels = width
        super().__init__(*layers)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def build_small(shape: SmallDetectorShape) -> FasterRCNN:
    """A torchvision FasterRCNN with the small backbone; its transform neither resizes nor pads."""
    backbone = SmallBackbone(shape.widths)
    anchors = AnchorGenerator(sizes=(shape.anchor_sizes,), aspect_ratios=(shape.aspect_ratios,))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=shape.roi_size, sampling_ratio=shape.sampling_ratio)
    head = TwoMLPHead(backbone.out_channels * shape.roi_size**2, shape.representation)
    return FasterRCNN(
        backbone,
        min_size=shape.image_size,
        max_size=shape.image_size,
        image_mean=list(shape.mean),
        image_std=list(shape.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=shape.rpn_pre_nms_top_n * 2,
        rpn_pre_nms_top_n_test=shape.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=shape.rpn_post_nms_top_n * 2,
        rpn_post_nms_top_n_test=shape.rpn_post_nms_top_n,
        rpn_batch_size_per_image=128,
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(shape.representation, shape.num_classes + 1),
        box_batch_size_per_image=shape.train_rois_per_image,
        box_positive_fraction=shape.train_positive_fraction,
        box_detections_per_img=shape.detections_per_image,
    )
