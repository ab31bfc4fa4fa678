"""Whole labelled photos, the material of the training frames (:mod:`~fer_edge_training.
mosaic`): LFW's colour photos with every face boxed, FER+'s faces, and the real scenes.

Every source becomes a list of :class:`Photo`: an image with the box of every face in it
and, per face, an expression target ``[C]`` (a probability vector) or NaNs: a face that
is there (the detector must find it) but has no expression label (no expression loss).

* **LFW** (``shared/data/lfw``: ``images/<Name>/<Name>_NNNN.jpg``): every face MTCNN finds
  (``data/lfw_boxes.csv``, :mod:`~fer_edge_training.mtcnn` ``--all-faces``) with a score of
  at least :data:`MIN_SCORE`. ``facial_expressions``' ``legend.csv`` labels the photo by
  file name; the label belongs to the face at the photo's centre (LFW photos are centred
  on the named person's face). Photos are dealt to train / val / test by the identity
  split of ``data/splits`` (a person the split does not know goes to train); with a
  teacher (:mod:`~fer_edge_training.teacher`), the target is ``(1 - soft) one-hot + soft
  teacher``.
* **FER+** (:mod:`~fer_edge_training.ferplus`): one face filling the 48x48 image, its box
  :data:`FERPLUS_BOX` (the median MTCNN box of FER+ faces, which FER2013 registered
  alike), its target the FER+ vote distribution.

The real scenes (``shared/data/scenes``, every MTCNN face in ``data/scene_boxes.csv``,
read with :func:`read_face_boxes`) are for evaluation only
(:mod:`~fer_edge_training.compare`), never for training.

:class:`BoxedFace` is one labelled face in an image, as the accuracy checks ask about it;
:func:`read_boxes` reads the one-face-per-crop CSV of ``facial_expressions``
(``data/facial_expressions_boxes.csv``), which the teacher's labels were made with.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data import identity_of, read_facial_expressions
from .ferplus import FerPlusFace
from .model import CLASSES

HERE = Path(__file__).resolve().parents[1]
LFW_BOXES = HERE / "data" / "lfw_boxes.csv"
SPLITS_DIR = HERE / "data" / "splits"
#: Faces MTCNN scores below this are left out (neither a face nor background).
MIN_SCORE = 0.9
#: The labelled face's centre lies within this fraction of the photo's size from its centre.
CENTRE_TOLERANCE = 0.2
#: The face box of a FER+ image, as fractions of its width and height (x1, y1, x2, y2).
FERPLUS_BOX = (0.08, 0.0, 0.88, 1.0)
#: Number of expression classes.
NUM_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class Photo:
    """An image, its face boxes ``[k, 4]`` (x1, y1, x2, y2 pixels) and expression targets
    ``[k, C]`` (rows of NaN: a face without an expression label); ``label`` is the class
    of the labelled face (-1: none), for class-balanced sampling."""

    path: Path
    boxes: np.ndarray = field(compare=False)
    targets: np.ndarray = field(compare=False)
    label: int = -1

    def labelled_box(self) -> np.ndarray | None:
        """The box of the face with an expression label, if any."""
        rows = np.flatnonzero(~np.isnan(self.targets).any(1))
        return self.boxes[rows[0]] if len(rows) else None


@dataclass(frozen=True)
class BoxedFace:
    """A labelled face: its image, its class and its box in the image's pixels."""

    path: Path
    label: int
    box: tuple[float, float, float, float]


def read_boxes(csv_path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """Face boxes by image name, normalised to [0, 1] of the image the CSV was made on
    (columns ``image,x1,y1,x2,y2,score,faces,width,height``); images with no face are left
    out. Normalised boxes work on the reduced copy and on the full-size upstream images."""
    boxes = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row["x1"]:
                continue
            w, h = float(row["width"]), float(row["height"])
            boxes[row["image"]] = (
                float(row["x1"]) / w,
                float(row["y1"]) / h,
                float(row["x2"]) / w,
                float(row["y2"]) / h,
            )
    return boxes


def in_pixels(box, width: float, height: float) -> tuple[float, float, float, float]:
    """A normalised box of :func:`read_boxes` in the pixels of a ``width`` x ``height``
    image."""
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def unlabelled(count: int) -> np.ndarray:
    """``count`` target rows for faces without an expression label."""
    return np.full((count, NUM_CLASSES), np.nan, np.float32)


def add_source_arguments(ap: argparse.ArgumentParser) -> None:
    """The command-line options saying where the photos are: ``--data`` (the
    ``facial_expressions`` root, for ``legend.csv``), ``--lfw``, ``--lfw-boxes``,
    ``--splits``, ``--ferplus``."""
    ap.add_argument(
        "--data", type=Path, required=True, help="facial_expressions root (legend labels)"
    )
    ap.add_argument("--lfw", type=Path, required=True, help="LFW whole photos")
    ap.add_argument("--lfw-boxes", type=Path, default=LFW_BOXES, help="LFW face boxes CSV")
    ap.add_argument("--splits", type=Path, default=SPLITS_DIR, help="LFW identity split files")
    ap.add_argument("--ferplus", type=Path, required=True, help="FER+ (fer2013new.csv + images)")


def read_face_boxes(csv_path: str | Path, min_score: float = MIN_SCORE) -> dict[str, np.ndarray]:
    """``image -> [k, 4]`` boxes of an MTCNN CSV (every row a face; images without a face
    map to an empty array), faces below ``min_score`` left out."""
    boxes: dict[str, list] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            faces = boxes[row["image"]]
            if row["x1"] and float(row["score"]) >= min_score:
                faces.append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}


def centre_face(boxes: np.ndarray, width: int, height: int) -> int | None:
    """Index of the box nearest the image's centre, if that is within
    :data:`CENTRE_TOLERANCE` of the image's size from it."""
    if len(boxes) == 0:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    offsets = np.abs(centres - [width / 2, height / 2]) / [width, height]
    best = int(np.argmin(offsets.max(1)))
    return best if offsets[best].max() <= CENTRE_TOLERANCE else None


def read_identity_splits(splits_dir: str | Path = SPLITS_DIR) -> dict[str, str]:
    """``identity -> split`` from the split files ``<split>.txt`` (lines ``images/<name>
    <class>``, :func:`~fer_edge_training.data.write_splits`)."""
    splits = {}
    for split in ("train", "val", "test"):
        for line in Path(splits_dir, f"{split}.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                splits[identity_of(Path(line.split()[0]).name)] = split
    return splits


def lfw_photos(
    lfw_root: str | Path,
    legend_root: str | Path,
    boxes_csv: str | Path = LFW_BOXES,
    splits_dir: str | Path = SPLITS_DIR,
    teacher: dict[str, np.ndarray] | None = None,
    soft: float = 0.0,
) -> dict[str, list[Photo]]:
    """LFW photos by split (see the module docstring). A photo without a legend label, or
    whose label has no face at its centre, keeps its faces, all unlabelled."""
    lfw_root = Path(lfw_root)
    labels = {crop.path.name: crop.label for crop in read_facial_expressions(legend_root)[0]}
    split_of = read_identity_splits(splits_dir)
    boxes = read_face_boxes(boxes_csv)
    out: dict[str, list[Photo]] = {"train": [], "val": [], "test": []}
    for name in sorted(boxes):
        path = lfw_root / "images" / name
        faces = boxes[name]
        targets = unlabelled(len(faces))
        file_name = Path(name).name
        label = labels.get(file_name, -1)
        if label >= 0:
            with Image.open(path) as im:
                centre = centre_face(faces, *im.size)
            if centre is None:
                label = -1
            else:
                target = np.eye(NUM_CLASSES, dtype=np.float32)[label]
                if teacher is not None and file_name in teacher:
                    target = (1 - soft) * target + soft * teacher[file_name].astype(np.float32)
                targets[centre] = target
        split = split_of.get(identity_of(file_name), "train")
        out[split].append(Photo(path, faces, targets, label))
    return out


def ferplus_photos(faces: list[FerPlusFace]) -> list[Photo]:
    """FER+ faces as photos: box :data:`FERPLUS_BOX` of the image, the vote distribution
    as target."""
    out = []
    for face in faces:
        with Image.open(face.path) as im:
            w, h = im.size
        box = np.asarray([FERPLUS_BOX], np.float32) * [w, h, w, h]
        out.append(Photo(face.path, box, face.target[None].astype(np.float32), face.label))
    return out
