"""Grouped non-maximum suppression with the exact semantics of ONNX ``NonMaxSuppression``.

torchvision's ``batched_nms`` separates groups by shifting boxes by ``group * (max + 1)``; traced,
that trick loses float32 precision as the group count grows (90 classes x 8 images of 800 px boxes
sit near 6e5 px, where one ulp is 0.06 px). ONNX NonMaxSuppression runs NMS per (batch, class)
natively, so the detector's export forward calls this op: eager, it loops over groups with
``torchvision.ops.nms`` (exactly torchvision's per-group result); exported, it becomes one
``NonMaxSuppression`` node (the TorchScript exporter's symbolic is registered on import).
"""

from __future__ import annotations

import torch
import torchvision
from torch.onnx.symbolic_helper import parse_args

# max_output_boxes_per_class: every box may be kept; the callers cap counts with top-k afterwards.
_KEEP_ALL = 2**62


@torch.library.custom_op("ninefold::grouped_nms", mutates_args=())
def grouped_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """NMS independently for every (group n, class c).

    boxes: FP32 [N, S, 4] x1,y1,x2,y2 with x1 <= x2, y1 <= y2, shared by the C classes of group n.
    scores: FP32 [N, C, S]; a box takes part in (n, c) only when its score > score_threshold.
    Returns INT64 [M, 3] rows (n, c, box index) of the kept boxes, as ONNX NonMaxSuppression does.
    """
    kept = [boxes.new_zeros((0, 3), dtype=torch.int64)]
    for group in range(boxes.shape[0]):
        for cls in range(scores.shape[1]):
            candidates = torch.nonzero(scores[group, cls] > score_threshold).flatten()
            keep = candidates[
                torchvision.ops.nms(boxes[group, candidates], scores[group, cls, candidates], iou_threshold)
            ]
            kept.append(torch.stack([torch.full_like(keep, group), torch.full_like(keep, cls), keep], dim=1))
    return torch.cat(kept)


@parse_args("v", "v", "f", "f")
def _grouped_nms_onnx(g, boxes, scores, iou_threshold: float, score_threshold: float):  # noqa: ANN001, ANN202
    # center_point_box=0 reads corners as (y1, x1, y2, x2); IoU is symmetric in x and y, so x-first is fine.
    return g.op(
        "NonMaxSuppression",
        boxes,
        scores,
        g.op("Constant", value_t=torch.tensor([_KEEP_ALL], dtype=torch.int64)),
        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
        g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
    )


# The pipeline exports with the TorchScript exporter: map the op to ONNX NonMaxSuppression (opset >= 11).
torch.onnx.register_custom_op_symbolic("ninefold::grouped_nms", _grouped_nms_onnx, 11)
