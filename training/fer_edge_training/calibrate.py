"""Per-expression logit offsets for the faces a deployment sees (post-hoc logit adjustment).

    python -m fer_edge_training.calibrate --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus \\
        --checkpoint ../runs/v2/last.pt --out ../runs/v2/calibrated.pt

Training draws the rare expressions far more often than they occur (``train --balance``),
so the trained classifier's prior is much flatter than that of the faces in front of a
camera, which are mostly neutral or happy. This fits one offset per expression, added to
that expression's logit (logit adjustment, Menon et al. 2021, with the offsets fitted
rather than derived from class counts), on validation faces that look like deployment at
their natural frequencies: the whole colour LFW photos of the validation identities and
FER+'s valid split (:func:`.compare.expression_faces`), and folds the offsets into the
biases of the classification convs: the exported model and the runtime need nothing new.

The faces are seen as :mod:`.compare` sees the test sets: each whole image letterboxed;
a face's answer is its highest-scoring cell whose box has IoU >= :data:`.compare.MATCH_IOU`
with the face's box, if that cell scores at least ``--confidence``
(:data:`FIT_CONFIDENCE` by default, near the runtime's own default). A cell's score is
sigmoid(objectness) x sigmoid(expression logit), so an offset that lowers an expression
also lowers its faces' detection scores: fitted at the runtime's threshold, the offsets
count the faces they would push below it as lost (v6's fit at 0.05 lowered happiness by
0.25, and the runtime then missed a smiling face at 0.128). (The runtime's
NMS only drops that cell for a better one that overlaps it and misses the face box.) The
offsets maximise ``accuracy + WEIGHT x macro F1`` by coordinate ascent over
:data:`GRID` (bounded: at most 2 either way): accuracy at the natural frequencies, without
giving up the rare expressions. F1 rather than balanced accuracy (v3's objective), because
balanced accuracy counts recall only: it paid for raising anger until a quarter of all
faces were called angry, at a precision of 0.27. Every fitted expression must keep a
recall of :data:`MIN_RECALL`: one that starts below it is first raised to the smallest
offset that reaches it (v6's fear started below it and, with that lower recall as its
floor, the fit lowered it), unless no offset within the bounds does or its answers there
would be mostly wrong (precision under :data:`MIN_LIFT_PRECISION`); offsets that take an
expression below its floor are refused, so no expression is traded away for the common
ones. With ``--keep-balanced-accuracy`` the fit also refuses offsets that lower the
balanced accuracy below the uncalibrated model's: accuracy is then gained only where it
costs the rare expressions nothing on the whole (v13's free fit gave up 2 points of FER+
validation balanced accuracy for its accuracy, v17's would have given up 4).
The offsets, and the figures before and after, are written beside ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from .compare import (
    MATCH_IOU,
    Scores,
    expression_faces,
    score,
)
from .decode import cell_scores, decode_cells, iou
from .export import build
from .model import CLASSES
from .photos import BoxedFace, add_source_arguments
from .preprocess import load_rgb, preprocess

#: Face score threshold the offsets are fitted at by default. fer-edge's default
#: (`DecodeOptions::default`, src/decode.rs) is higher (0.18 for v9, 0.25 for v13, 0.22 for
#: v17): v9 fitted here at 0.15 and read at 0.18 did better on the real scenes than a fit at 0.18
#: (training/candidates/README.md).
FIT_CONFIDENCE = 0.15
#: Weight of macro F1 in the fitted objective.
WEIGHT = 1.0
#: Recall every fitted expression keeps, raised to it first if needed (or its recall before
#: calibration, if no offset within the bounds reaches it): the model's goal for each
#: expression (0.30; at 0.25, v6's fit took fear to 0.28 and sadness to 0.27 for 0.004 of
#: accuracy).
MIN_RECALL = 0.30
#: Precision an expression raised to :data:`MIN_RECALL` must keep: where reaching the floor
#: would make most of its answers wrong (at 0.30, more than two in three), it is not raised.
MIN_LIFT_PRECISION = 0.30
#: Offsets tried for each expression.
GRID = np.arange(-2.0, 2.0001, 0.25, dtype=np.float32)
#: Passes of coordinate ascent over the expressions.
ROUNDS = 3
#: Expressions with fewer validation faces than this keep offset 0: too few to fit (a
#: class absent from the split would otherwise be pushed to the grid's minimum and never
#: predicted again).
MIN_FACES = 20
#: State-dict keys of the classification convs' biases (one per head level).
CLS_BIAS = re.compile(r"^head\.cls_preds\.\d+\.bias$")


def face_cells(model: torch.nn.Module, faces: list[BoxedFace], size: int) -> list[np.ndarray]:
    """For each face, the raw logits ``[k, 1 + 7]`` of the cells whose box overlaps it."""
    cells = []
    for face in faces:
        image = load_rgb(str(face.path))
        x, r = preprocess(image, size)
        with torch.no_grad():
            levels = [level.numpy() for level in model(torch.from_numpy(x))]
        boxes, logits = decode_cells(levels, size)
        overlap = iou(np.asarray(face.box, dtype=np.float32) * np.float32(r), boxes)
        cells.append(logits[overlap >= MATCH_IOU])
    return cells


def answer(
    cells: np.ndarray, offsets: np.ndarray, confidence: float = FIT_CONFIDENCE
) -> int | None:
    """The expression given to a face with ``offsets`` added to the expression logits;
    None when no cell scores at least ``confidence``."""
    scores = cell_scores(cells + np.concatenate([[0.0], offsets]).astype(np.float32))
    best = scores.max(axis=1, initial=0.0)
    if not (best >= confidence).any():
        return None
    return int(scores[int(best.argmax())].argmax())


def objective(
    labels: list[int],
    cells: list[np.ndarray],
    offsets: np.ndarray,
    floors: dict[int, float],
    confidence: float,
    min_balanced: float = 0.0,
) -> float:
    """``accuracy + WEIGHT x macro F1`` of the answers with ``offsets``; minus
    infinity when an expression of ``floors`` has a lower recall than its floor, or the
    balanced accuracy is under ``min_balanced``."""
    s = score(labels, [answer(c, offsets, confidence) for c in cells])
    if any(s.recall[c] < floor - 1e-9 for c, floor in floors.items()):
        return -np.inf
    if s.balanced_accuracy < min_balanced - 1e-9:
        return -np.inf
    return s.accuracy + WEIGHT * s.macro_f1


def lift_to_floor(
    labels: list[int], cells: list[np.ndarray], expression: int, confidence: float
) -> tuple[float, float]:
    """``(offset, floor)`` of ``expression``: offset 0 and floor :data:`MIN_RECALL` when
    its recall already reaches that; else the smallest positive offset of :data:`GRID`
    that reaches it (the other offsets at 0), if its answers there are right at least
    :data:`MIN_LIFT_PRECISION` of the time; else offset 0 and its recall as it is for
    floor."""

    def scores_at(value: float) -> Scores:
        offsets = np.zeros(len(CLASSES), dtype=np.float32)
        offsets[expression] = value
        return score(labels, [answer(c, offsets, confidence) for c in cells])

    unlifted = scores_at(0.0).recall[expression]
    if unlifted >= MIN_RECALL - 1e-9:
        return 0.0, MIN_RECALL
    for value in GRID[GRID > 0]:
        lifted = scores_at(float(value))
        if lifted.recall[expression] >= MIN_RECALL - 1e-9:
            if lifted.precision[expression] >= MIN_LIFT_PRECISION - 1e-9:
                return float(value), MIN_RECALL
            break
    return 0.0, unlifted


def fit_offsets(
    labels: list[int],
    cells: list[np.ndarray],
    confidence: float = FIT_CONFIDENCE,
    min_balanced: float = 0.0,
) -> np.ndarray:
    """Coordinate ascent of :func:`objective` over :data:`GRID` for the expressions
    with at least :data:`MIN_FACES` faces, from zero offsets but for the expressions
    :func:`lift_to_floor` raises to their floor; a change is kept only when it strictly
    improves the objective (and keeps the balanced accuracy at least ``min_balanced``)."""
    offsets = np.zeros(len(CLASSES), dtype=np.float32)
    fitted = [c for c in range(len(CLASSES)) if labels.count(c) >= MIN_FACES]
    floors = {}
    for c in fitted:
        offsets[c], floors[c] = lift_to_floor(labels, cells, c, confidence)
    best = objective(labels, cells, offsets, floors, confidence, min_balanced)
    for _ in range(ROUNDS):
        improved = False
        for c in fitted:
            for value in GRID:
                trial = offsets.copy()
                trial[c] = value
                got = objective(labels, cells, trial, floors, confidence, min_balanced)
                if got > best + 1e-9:
                    best, offsets, improved = got, trial, True
        if not improved:
            break
    return offsets


def with_offsets(state: dict[str, torch.Tensor], offsets: np.ndarray) -> dict[str, torch.Tensor]:
    """A copy of the state dict with ``offsets`` added to every classification bias."""
    keys = [k for k in state if CLS_BIAS.match(k)]
    if not keys:
        raise ValueError("state dict has no head.cls_preds.<level>.bias")
    out = dict(state)
    for key in keys:
        out[key] = state[key] + torch.as_tensor(offsets, dtype=state[key].dtype)
    return out


def summary(s: Scores) -> dict[str, object]:
    """The figures of ``s`` the report keeps."""
    return {
        "accuracy": s.accuracy,
        "balanced_accuracy": s.balanced_accuracy,
        "macro_f1": s.macro_f1,
        "recall": dict(zip(CLASSES, s.recall, strict=True)),
        "precision": dict(zip(CLASSES, s.precision, strict=True)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(ap)
    ap.add_argument("--checkpoint", type=Path, required=True, help="trained checkpoint (.pt)")
    ap.add_argument("--out", type=Path, required=True, help="calibrated checkpoint to write")
    ap.add_argument("--variant", default="nano")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument(
        "--confidence",
        type=float,
        default=FIT_CONFIDENCE,
        help=f"face score a face's answer needs (default {FIT_CONFIDENCE})",
    )
    ap.add_argument(
        "--keep-balanced-accuracy",
        action="store_true",
        help="refuse offsets that lower the balanced accuracy below the uncalibrated model's",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args.variant, 0, str(args.checkpoint), args.size)
    faces = expression_faces(args, "lfw", "val") + expression_faces(args, "ferplus", "val")
    labels = [f.label for f in faces]
    cells = face_cells(model, faces, args.size)
    zero = np.zeros(len(CLASSES), dtype=np.float32)
    before = score(labels, [answer(c, zero, args.confidence) for c in cells])
    min_balanced = before.balanced_accuracy if args.keep_balanced_accuracy else 0.0
    offsets = fit_offsets(labels, cells, args.confidence, min_balanced)
    after = score(labels, [answer(c, offsets, args.confidence) for c in cells])

    state = with_offsets(model.state_dict(), offsets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    torch.save(state, partial)
    partial.replace(args.out)
    report = {
        "checkpoint": str(args.checkpoint),
        "faces": len(faces),
        "confidence": args.confidence,
        "keep_balanced_accuracy": args.keep_balanced_accuracy,
        "offsets": {name: float(v) for name, v in zip(CLASSES, offsets, strict=True)},
        "before": summary(before),
        "after": summary(after),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
