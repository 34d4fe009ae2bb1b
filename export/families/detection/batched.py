"""A batch-friendly inference forward over a torchvision ``FasterRCNN``'s own modules and weights.

torchvision's eval forward keeps Python lists of variable-length tensors per image, so a traced graph
bakes in the batch size it saw. This forward computes the same detections with fixed shapes per image:
the top ``post_nms_top_n`` proposals per image (padded, masked), RoIAlign over all images at once
with batch indices, per-(image, class) NMS as one grouped op, and padded outputs plus a count.
Images must already be resized and normalised (torchvision's transform is the server's preprocessing,
contract.preprocessing), in an input whose size is a multiple of the backbone's size divisibility (32),
so torchvision's transform would neither resize nor pad it. The input's height and width may vary from
call to call (the full configs' letterbox: each image fills the top-left height x width of the batch's
canvas, the rest zero, exactly as torchvision batches images); ``image_sizes`` gives each image's extent,
to which proposals and boxes are clipped, as torchvision clips them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import roi_align
from torchvision.ops.poolers import _setup_scales

from export.families.detection.nms import grouped_nms

# Scores are probabilities in [0, 1]; a masked-out candidate gets this and never passes the NMS filter.
_MASKED = -1.0
_MASK_THRESHOLD = -0.5


@dataclass(frozen=True)
class Detections:
    """Padded detections for a batch. Rows past ``num_detections`` are zeros.

    boxes: FP32 [B, K, 4] x1,y1,x2,y2 in input pixels; scores: FP32 [B, K] descending;
    labels: INT64 [B, K] class index without background (torchvision label - 1);
    num_detections: INT64 [B, 1].
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num_detections: Tensor


class BatchedFasterRCNN(nn.Module):
    """Export forward of ``model`` (its eval thresholds and top-n settings)."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor, image_sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images: FP32 [B, 3, H, W] normalised; image_sizes: FP32 [B, 2] (height, width) each image fills,
        None = all of it -> (boxes, scores, labels, num_detections), see Detections."""
        features = self.model.backbone(images)
        if isinstance(features, Tensor):  # a single-map backbone, named "0" as GeneralizedRCNN does
            features = OrderedDict([("0", features)])
        limits = self._limits(images, image_sizes)
        proposals, proposal_valid = self._propose(images, list(features.values()), limits)
        detections = self._detect(features, proposals, proposal_valid, limits, (images.shape[-2], images.shape[-1]))
        return detections.boxes, detections.scores, detections.labels, detections.num_detections

    def _limits(self, images: Tensor, image_sizes: Tensor | None) -> Tensor:
        """FP32 [B, 1, 4]: the largest x1, y1, x2, y2 a box may have in each image (width, height, ...)."""
        if image_sizes is None:
            return images.new_ones(images.shape[0], 1, 4) * torch.tensor(images.shape[-2:]).flip(0).repeat(2)
        return image_sizes.flip(1).repeat(1, 2)[:, None, :]

    def _propose(self, images: Tensor, features: list[Tensor], limits: Tensor) -> tuple[Tensor, Tensor]:
        """RPN: -> proposals FP32 [B, P, 4] and their validity BOOL [B, P] (padding is False)."""
        rpn = self.model.rpn
        batch = images.shape[0]
        objectness, deltas = rpn.head(features)
        anchors_per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        # Anchors depend on the (fixed) sizes only: compute them for one image, share them.
        anchors = rpn.anchor_generator(ImageList(images[:1], [tuple(images.shape[-2:])]), features)[0]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        all_anchors = anchors.repeat(batch, 1)
        proposals = rpn.box_coder.decode_single(deltas.detach(), all_anchors).view(batch, -1, 4)
        objectness = objectness.view(batch, -1)

        top_idx = rpn._get_top_n_idx(objectness, anchors_per_level)  # (B, N) per-level top-n
        levels = torch.cat([torch.full((n,), lvl, dtype=torch.int64) for lvl, n in enumerate(anchors_per_level)])[
            top_idx
        ]
        scores = torch.sigmoid(torch.gather(objectness, 1, top_idx))
        boxes = torch.gather(proposals, 1, top_idx[..., None].expand(-1, -1, 4))
        boxes = _clip(boxes, limits)
        valid = _not_small(boxes, rpn.min_size) & (scores >= rpn.score_thresh)

        # NMS per (image, level): levels play the role of ONNX NMS classes.
        num_levels = len(anchors_per_level)
        level_ids = torch.arange(num_levels).view(1, num_levels, 1)
        level_scores = torch.where(valid[:, None, :] & (levels[:, None, :] == level_ids), scores[:, None, :], _MASKED)
        kept = grouped_nms(boxes, level_scores, rpn.nms_thresh, _MASK_THRESHOLD)
        top_scores, top = _top_kept(scores, kept[:, 0], kept[:, 2], rpn.post_nms_top_n())
        proposals = torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4))
        return proposals, top_scores > _MASK_THRESHOLD

    def _detect(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        limits: Tensor,
        input_size: tuple[int, int],
    ) -> Detections:
        """RoI heads + per-class NMS -> the top ``detections_per_img`` per image."""
        heads = self.model.roi_heads
        batch, num_proposals = proposals.shape[:2]
        flat_proposals = proposals.reshape(-1, 4)
        image_index = torch.arange(batch, dtype=proposals.dtype).repeat_interleave(num_proposals)
        rois = torch.cat([image_index[:, None], flat_proposals], dim=1)  # (B*P, 5)
        pooled = self._roi_align(features, rois, flat_proposals, input_size)
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))

        num_classes = class_logits.shape[-1]
        boxes = heads.box_coder.decode_single(box_regression, flat_proposals)
        boxes = _clip(boxes.view(batch, -1, 4), limits).view(batch, num_proposals, num_classes, 4)
        scores = torch.softmax(class_logits, -1).view(batch, num_proposals, num_classes)
        # Drop background, lay out per (image, class): (B, C, P, 4) and (B, C, P).
        boxes = boxes[:, :, 1:].permute(0, 2, 1, 3)
        scores = scores[:, :, 1:].permute(0, 2, 1)
        valid = proposal_valid[:, None, :] & (scores > heads.score_thresh) & _not_small(boxes, 1e-2)
        scores = torch.where(valid, scores, _MASKED)

        classes = num_classes - 1
        kept = grouped_nms(
            boxes.reshape(batch * classes, num_proposals, 4),
            scores.reshape(batch * classes, 1, num_proposals),
            heads.nms_thresh,
            _MASK_THRESHOLD,
        )
        # kept rows are (image * classes + class, 0, proposal): index into (B, C * P).
        image, within = kept[:, 0] // classes, (kept[:, 0] % classes) * num_proposals + kept[:, 2]
        top_scores, top = _top_kept(scores.reshape(batch, -1), image, within, heads.detections_per_img)
        found = top_scores > _MASK_THRESHOLD
        top_boxes = torch.gather(boxes.reshape(batch, -1, 4), 1, top[..., None].expand(-1, -1, 4))
        return Detections(
            boxes=torch.where(found[..., None], top_boxes, 0.0),
            scores=torch.where(found, top_scores, 0.0),
            labels=torch.where(found, top // num_proposals, 0),
            num_detections=found.sum(dim=1, keepdim=True),
        )

    def _roi_align(
        self, features: dict[str, Tensor], rois: Tensor, boxes: Tensor, input_size: tuple[int, int]
    ) -> Tensor:
        """The model's MultiScaleRoIAlign (same feature maps, scales, level mapping) on (K, 5) rois."""
        pool = self.model.roi_heads.box_roi_pool
        maps = [feature for name, feature in features.items() if name in pool.featmap_names]
        # The scales are powers of two (feature / input size, rounded), the same at every input size.
        scales, mapper = _setup_scales(maps, [input_size], pool.canonical_scale, pool.canonical_level)

        def align(feature: Tensor, selected: Tensor, scale: float) -> Tensor:
            return roi_align(feature, selected, pool.output_size, scale, pool.sampling_ratio)

        if len(maps) == 1:
            return align(maps[0], rois, scales[0])
        levels = mapper([boxes])
        pooled = rois.new_zeros((rois.shape[0], maps[0].shape[1], *pool.output_size))
        for level, (feature, scale) in enumerate(zip(maps, scales, strict=True)):
            in_level = torch.nonzero(levels == level).flatten()
            pooled = pooled.index_put((in_level,), align(feature, rois[in_level], scale))
        return pooled


def _clip(boxes: Tensor, limits: Tensor) -> Tensor:
    """torchvision's clip_boxes_to_image with a size per image: boxes [B, N, 4], limits [B, 1, 4]."""
    return torch.minimum(boxes.clamp(min=0), limits)


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision's remove_small_boxes as a mask over [..., 4] boxes."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def _top_kept(scores: Tensor, image: Tensor, index: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Top ``count`` scores per image among the kept (image, index) entries of scores [B, N].

    Returns scores [B, count] (descending; _MASKED where an image kept fewer) and indices [B, count].
    """
    batch, size = scores.shape
    flat = image * size + index
    kept_scores = torch.full((batch * size,), _MASKED).index_put((flat,), scores.reshape(-1)[flat])
    return kept_scores.view(batch, size).topk(min(count, size), dim=1)
