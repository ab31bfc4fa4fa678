"""YOLOX training loss with SimOTA label assignment, for the raw maps of the ONNX contract.

A cell (gx, gy) of a level with stride s predicts, as :mod:`fer_edge_training.decode`
reads it: ``cx = (t0 + gx) s``, ``cy = (t1 + gy) s``, ``w = exp(t2) s``, ``h = exp(t3) s``,
objectness ``t4`` and one logit per class ``t5..``. Each ground-truth face is assigned
its ``dynamic_k`` cheapest cells among those near it (SimOTA, Ge et al. 2021: cost =
class cost + 3 * -log IoU, candidates inside the box or within 2.5 strides of its
centre, ``dynamic_k`` = the summed IoU of its 10 best candidates). Losses: ``1 - IoU^2``
on assigned boxes (weight 5), objectness BCE on every cell, class BCE on assigned cells
against ``one-hot * IoU``; all divided by the number of assigned cells. Labels are class
indices ``[k]`` or soft targets ``[k, C]`` (FER+'s vote distributions, a teacher's
probabilities), which then replace the one-hot in the class cost and loss. A soft
target row of NaN is a face without an expression label: it is assigned cells and trains
box and objectness, but adds no class cost or class loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Candidate cells lie within this many strides of a face's centre (or inside its box).
CENTRE_RADIUS = 2.5
#: Weight of the box loss.
BOX_WEIGHT = 5.0
#: ``exp`` of the size logits is clamped here (a cell predicting e^10 strides is already
#: far beyond any image) so early training cannot overflow.
MAX_SIZE_LOGIT = 10.0


def flatten_levels(levels: list[Tensor], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``raw [B, A, 5+C]``, grid positions ``[A, 2]`` (gx, gy) and strides ``[A]``
    (``size / map width``), levels concatenated finest first, cells row-major."""
    raws, grids, strides = [], [], []
    for level in levels:
        _, _, h, w = level.shape
        raws.append(level.flatten(2).transpose(1, 2))
        gy, gx = torch.meshgrid(
            torch.arange(h, device=level.device, dtype=level.dtype),
            torch.arange(w, device=level.device, dtype=level.dtype),
            indexing="ij",
        )
        grids.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        strides.append(torch.full((h * w,), size / w, device=level.device, dtype=level.dtype))
    return torch.cat(raws, 1), torch.cat(grids, 0), torch.cat(strides, 0)


def decode_boxes(raw: Tensor, grids: Tensor, strides: Tensor) -> Tensor:
    """``[..., A, 4]`` boxes (x1, y1, x2, y2) in input pixels."""
    s = strides[:, None]
    centre = (raw[..., 0:2] + grids) * s
    size = torch.exp(raw[..., 2:4].clamp(max=MAX_SIZE_LOGIT)) * s
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def class_targets(gt_labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``[k, C]`` targets: soft labels as they are, class indices one-hot."""
    if gt_labels.is_floating_point():
        return gt_labels.to(dtype)
    return F.one_hot(gt_labels, num_classes).to(dtype)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a [M, 4]`` with every box of ``b [N, 4]`` -> ``[M, N]``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


@torch.no_grad()
def simota_assign(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pred_boxes: Tensor,
    obj_logits: Tensor,
    cls_logits: Tensor,
    grids: Tensor,
    strides: Tensor,
) -> tuple[Tensor, Tensor]:
    """Cells assigned to faces in one image: ``fg [A]`` bool, and for the assigned cells
    (in cell order) the index of their face."""
    num_cells = pred_boxes.shape[0]
    centres = (grids + 0.5) * strides[:, None]
    gt_centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    in_box = (
        (centres[None, :, 0] > gt_boxes[:, None, 0])
        & (centres[None, :, 0] < gt_boxes[:, None, 2])
        & (centres[None, :, 1] > gt_boxes[:, None, 1])
        & (centres[None, :, 1] < gt_boxes[:, None, 3])
    )
    radius = CENTRE_RADIUS * strides[None, :]
    in_centre = ((centres[None] - gt_centre[:, None]).abs() < radius[..., None]).all(-1)
    candidate = (in_box | in_centre).any(0)
    if not candidate.any():
        empty = torch.zeros(0, dtype=torch.long, device=pred_boxes.device)
        return torch.zeros(num_cells, dtype=torch.bool, device=pred_boxes.device), empty
    cand_idx = candidate.nonzero().squeeze(1)
    ious = pairwise_iou(gt_boxes, pred_boxes[cand_idx])
    probs = (cls_logits[cand_idx].sigmoid() * obj_logits[cand_idx, None].sigmoid()).sqrt()
    wanted = class_targets(gt_labels, cls_logits.shape[1], probs.dtype)
    unlabelled = wanted.isnan().any(1)
    cls_cost = F.binary_cross_entropy(
        probs[None].expand(len(gt_boxes), -1, -1).clamp(1e-6, 1 - 1e-6),
        wanted.nan_to_num(0.0)[:, None].expand(-1, len(cand_idx), -1),
        reduction="none",
    ).sum(-1)
    cls_cost[unlabelled] = 0.0
    both = (in_box & in_centre)[:, cand_idx]
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).to(cls_cost.dtype)
    top = min(10, len(cand_idx))
    dynamic_k = ious.topk(top, dim=1).values.sum(1).int().clamp(min=1)
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(len(gt_boxes)):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = True
    shared = matching.sum(0) > 1
    if shared.any():
        best = cost[:, shared].argmin(0)
        matching[:, shared] = False
        matching[best, shared.nonzero().squeeze(1)] = True
    assigned = matching.any(0)
    fg = torch.zeros(num_cells, dtype=torch.bool, device=pred_boxes.device)
    fg[cand_idx[assigned]] = True
    return fg, matching[:, assigned].float().argmax(0)


def yolox_loss(
    levels: list[Tensor],
    targets: list[tuple[Tensor, Tensor]],
    size: int,
    cls_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of a batch. ``targets[b] = (boxes [k, 4] x1y1x2y2 pixels, labels [k] or
    soft targets [k, C])``.
    ``cls_weight`` scales the expression term against box and objectness."""
    raw, grids, strides = flatten_levels(levels, size)
    boxes = decode_boxes(raw, grids, strides)
    obj_target = torch.zeros_like(raw[..., 4])
    box_losses, cls_losses = [], []
    num_fg = 0
    for b, (gt_boxes, gt_labels) in enumerate(targets):
        if len(gt_boxes) == 0:
            continue
        fg, matched = simota_assign(
            gt_boxes, gt_labels, boxes[b], raw[b, :, 4], raw[b, :, 5:], grids, strides
        )
        if not fg.any():
            continue
        num_fg += int(fg.sum())
        obj_target[b, fg] = 1.0
        iou = pairwise_iou(boxes[b, fg], gt_boxes[matched]).diagonal()
        box_losses.append((1.0 - iou**2).sum())
        cls_target = class_targets(gt_labels, raw.shape[-1] - 5, raw.dtype)[matched]
        cls_target = cls_target * iou.detach().clamp(min=0)[:, None]
        labelled = ~cls_target.isnan().any(1)
        cls_losses.append(
            F.binary_cross_entropy_with_logits(
                raw[b, fg, 5:][labelled], cls_target[labelled], reduction="sum"
            )
        )
    norm = max(num_fg, 1)
    zero = raw.sum() * 0
    loss_box = (sum(box_losses) if box_losses else zero) / norm
    loss_cls = (sum(cls_losses) if cls_losses else zero) / norm
    loss_obj = F.binary_cross_entropy_with_logits(raw[..., 4], obj_target, reduction="sum") / norm
    total = BOX_WEIGHT * loss_box + loss_obj + cls_weight * loss_cls
    parts = {
        "box": float(loss_box.detach()),
        "obj": float(loss_obj.detach()),
        "cls": float(loss_cls.detach()),
        "fg": num_fg / max(len(targets), 1),
    }
    return total, parts
