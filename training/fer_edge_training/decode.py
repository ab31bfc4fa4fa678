"""Decode the 3 raw output maps into detections (numpy, float32 arithmetic).

For each level i with raw map ``[1, 12, H_i, W_i]`` (or ``[12, H_i, W_i]``) and input
size S: ``stride_x = S / W_i``, ``stride_y = S / H_i`` (derived from shapes, never fixed).
For the cell at row gy, column gx::

    cx = (raw[0] + gx) * stride_x        w = exp(raw[2]) * stride_x
    cy = (raw[1] + gy) * stride_y        h = exp(raw[3]) * stride_y
    scores[c] = sigmoid(raw[4]) * sigmoid(raw[5 + c])      c = 0..6
    score = max_c scores[c];  label = argmax_c scores[c] (first maximum)
    box = [cx - w/2, cy - h/2, cx + w/2, cy + h/2]

Candidates are numbered level 0 first, then level 1, level 2, each in row-major cell
order. Keep ``score >= conf``. Per-class greedy NMS: candidates sorted by score
descending, ties by candidate number ascending; a candidate is dropped when its IoU with
an already kept box of the same label is ``> iou``
(IoU = intersection / (area_a + area_b - intersection), areas without +1; 0 when the
union is not positive). The kept boxes, in that same order (score descending, ties by
candidate number), are divided by ``r`` (undo the letterbox: image at the top-left) and
clipped to ``[0, orig_w] x [0, orig_h]``.
"""

from __future__ import annotations

import numpy as np

from .model import CLASSES

NUM_CLASSES = len(CLASSES)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


def decode_cells(levels: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """All cells of all levels: ``boxes [M, 4]`` (x1, y1, x2, y2) and their raw
    ``logits [M, 1 + 7]`` (objectness, then the expressions)."""
    all_boxes, all_logits = [], []
    for raw in levels:
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim == 4:
            if raw.shape[0] != 1:
                raise ValueError("decode expects batch size 1")
            raw = raw[0]
        c, h, w = raw.shape
        if c != 5 + NUM_CLASSES:
            raise ValueError(f"expected {5 + NUM_CLASSES} channels, got {c}")
        stride_x = np.float32(size / w)
        stride_y = np.float32(size / h)
        gy, gx = np.meshgrid(
            np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
        )
        cx = (raw[0] + gx) * stride_x
        cy = (raw[1] + gy) * stride_y
        bw = np.exp(raw[2]) * stride_x
        bh = np.exp(raw[3]) * stride_y
        half = np.float32(0.5)
        boxes = np.stack([cx - bw * half, cy - bh * half, cx + bw * half, cy + bh * half], -1)
        all_boxes.append(boxes.reshape(-1, 4))
        all_logits.append(raw[4:].reshape(1 + NUM_CLASSES, -1).T)
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_logits).astype(np.float32),
    )


def cell_scores(logits: np.ndarray) -> np.ndarray:
    """``[M, 1 + 7]`` logits -> ``[M, 7]`` scores ``sigmoid(obj) * sigmoid(cls)``."""
    return _sigmoid(logits[:, :1]) * _sigmoid(logits[:, 1:])


def decode_candidates(levels: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """All cells of all levels: ``boxes [M, 4]`` (x1, y1, x2, y2), ``scores [M, 7]``."""
    boxes, logits = decode_cells(levels, size)
    return boxes, cell_scores(logits)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a [4]`` against boxes ``b [M, 4]``."""
    ix1 = np.maximum(a[0], b[:, 0])
    iy1 = np.maximum(a[1], b[:, 1])
    ix2 = np.minimum(a[2], b[:, 2])
    iy2 = np.minimum(a[3], b[:, 3])
    inter = np.maximum(ix2 - ix1, 0) * np.maximum(iy2 - iy1, 0)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.float32(0)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thr: float) -> list[int]:
    """Per-class greedy NMS; returns kept indices, score descending (ties: index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))  # score desc, then index asc
    kept: list[int] = []
    for i in order:
        same = [k for k in kept if labels[k] == labels[i]]
        if same and np.any(iou(boxes[i], boxes[same]) > iou_thr):
            continue
        kept.append(int(i))
    return kept


def decode(
    levels: list[np.ndarray],
    size: int,
    r: float = 1.0,
    orig_hw: tuple[int, int] | None = None,
    conf: float = 0.25,
    iou_thr: float = 0.45,
) -> list[dict]:
    """Raw maps -> list of ``{"box": [x1, y1, x2, y2], "label", "score", "scores": [7]}``.

    ``r`` is the letterbox scale from :func:`.preprocess.preprocess`; ``orig_hw`` the
    original image's ``(h, w)`` for clipping (default: the letterboxed area, ``S / r``).
    """
    boxes, scores = decode_candidates(levels, size)
    best = scores.max(axis=1)
    labels = scores.argmax(axis=1)
    cand = np.nonzero(best >= np.float32(conf))[0]
    kept = nms(boxes[cand], best[cand], labels[cand], iou_thr)
    if orig_hw is None:
        orig_hw = (size / r, size / r)
    oh, ow = orig_hw
    out = []
    for j in kept:
        i = cand[j]
        b = boxes[i] / np.float32(r)
        b = np.clip(b, 0, np.array([ow, oh, ow, oh], dtype=np.float32))
        out.append(
            {
                "box": [float(v) for v in b],
                "label": int(labels[i]),
                "score": float(best[i]),
                "scores": [float(v) for v in scores[i]],
            }
        )
    return out
