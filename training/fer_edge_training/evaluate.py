"""Detection accuracy: per-class AP and mAP at IoU 0.5 (VOC all-point), and expression
accuracy on matched faces. The Rust ``fer-edge eval`` computes the same figures.

* AP of a class: its detections over all images, by score descending; one is a true
  positive when its IoU with a not yet matched face of that class in its image is
  ``>= 0.5`` (the face of highest IoU), else a false positive. AP is the area under the
  precision envelope (precision made non-increasing from the right), summed over the
  recall steps (VOC 2010+ "all-point"). mAP is the mean over classes that have faces.
* Expression accuracy: each labelled face is matched to the highest-scoring detection
  of any class with IoU ``>= 0.5``; accuracy = correct labels / matched faces; the share
  of faces matched is the detection recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLD = 0.5


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP of a precision/recall curve (in detection order)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


@dataclass
class Report:
    """Accuracy figures; ``ap[c]`` is None for a class without labelled faces."""

    ap: list[float | None]
    faces: list[int]
    matched: int
    correct: int
    confusion: np.ndarray = field(repr=False)

    @property
    def map50(self) -> float:
        values = [a for a in self.ap if a is not None]
        return float(np.mean(values)) if values else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.matched if self.matched else 0.0

    @property
    def recall(self) -> float:
        total = sum(self.faces)
        return self.matched / total if total else 0.0


def evaluate(detections, ground_truth, num_classes: int) -> Report:
    """``detections[i] = (boxes [n, 4], scores [n], labels [n])`` and
    ``ground_truth[i] = (boxes [k, 4], labels [k])`` for every image i."""
    if len(detections) != len(ground_truth):
        raise ValueError("one detection list per image is needed")
    ap: list[float | None] = []
    faces = [0] * num_classes
    for c in range(num_classes):
        records = []  # (score, image, box)
        gt_c, used = {}, {}
        for i, ((db, ds, dl), (gb, gl)) in enumerate(zip(detections, ground_truth, strict=False)):
            gt_c[i] = np.asarray(gb, np.float64)[np.asarray(gl) == c]
            used[i] = np.zeros(len(gt_c[i]), bool)
            for box, score, label in zip(db, ds, dl, strict=False):
                if label == c:
                    records.append((float(score), i, np.asarray(box, np.float64)))
        total = sum(len(g) for g in gt_c.values())
        faces[c] = total
        if total == 0:
            ap.append(None)
            continue
        records.sort(key=lambda r: -r[0])
        tp = np.zeros(len(records))
        for j, (_, i, box) in enumerate(records):
            if len(gt_c[i]) == 0:
                continue
            ious = _iou(box, gt_c[i])
            best = int(np.argmax(ious))
            if ious[best] >= IOU_THRESHOLD and not used[i][best]:
                used[i][best] = True
                tp[j] = 1
        ctp = np.cumsum(tp)
        recall = ctp / total
        precision = ctp / np.arange(1, len(records) + 1)
        ap.append(average_precision(recall, precision))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    matched = correct = 0
    for (db, ds, dl), (gb, gl) in zip(detections, ground_truth, strict=False):
        db = np.asarray(db, np.float64).reshape(-1, 4)
        for box, label in zip(np.asarray(gb, np.float64), gl, strict=False):
            if len(db) == 0:
                continue
            ok = _iou(box, db) >= IOU_THRESHOLD
            if not ok.any():
                continue
            pick = np.flatnonzero(ok)[np.argmax(np.asarray(ds)[ok])]
            matched += 1
            correct += int(dl[pick] == label)
            confusion[int(label), int(dl[pick])] += 1
    return Report(ap, faces, matched, correct, confusion)
