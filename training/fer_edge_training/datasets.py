"""Readers for the labelled-face formats users bring, all giving :class:`LabelledImage`.

======================  ==================================================================
``facial_expressions``  the layout of the ``facial_expressions`` repository (tight crops,
                        ``data/legend.csv``) with boxes from a face-box CSV
                        (:mod:`fer_edge_training.mtcnn`)
``rafdb``               RAF-DB "basic": ``EmoLabel/list_patition_label.txt`` (``name
                        label``, 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness,
                        6 anger, 7 neutral), ``Image/original/<name>`` and its box in
                        ``Annotation/boundingbox/<stem>_boundingbox.txt`` (``x1 y1 x2 y2``)
``sfew``                SFEW 2.0: ``<split>/<Class>/<frame>.png`` with class folders
                        ``Angry Disgust Fear Happy Neutral Sad Surprise``; SFEW has no
                        boxes, so the face box comes from a detector (MTCNN by default)
``yolo``                ``images/<name>.<ext>`` with ``labels/<name>.txt`` lines ``class cx
                        cy w h`` (normalised to the image), classes in the order of
                        :data:`~fer_edge_training.model.CLASSES`
``lines``               the paper's annotation lines ``path x1,y1,x2,y2,class ...`` (one
                        image a line, any number of boxes, paths relative to the file)
======================  ==================================================================

Expression names are matched to :data:`~fer_edge_training.model.CLASSES` by name or usual
synonym (angry, happy, sad, surprised, ...). Every reader checks what it reads and names
the file and line of anything it cannot use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import read_facial_expressions
from .model import CLASSES

FORMATS = ("facial_expressions", "rafdb", "sfew", "yolo", "lines")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_SYNONYMS = {
    "angry": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "scared": "fear",
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
}
#: RAF-DB basic label numbers (1-based) to class names.
RAFDB_LABELS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


class DatasetError(ValueError):
    """A dataset file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class LabelledImage:
    """An image with its labelled faces: ``boxes [k, 4]`` (x1, y1, x2, y2 pixels) and
    ``labels [k]`` (indices into :data:`CLASSES`)."""

    path: Path
    boxes: np.ndarray
    labels: np.ndarray


def class_index(name: str) -> int:
    """Index of an expression name or synonym, case-insensitive; KeyError if unknown."""
    key = name.strip().lower()
    key = _SYNONYMS.get(key, key)
    if key not in CLASSES:
        raise KeyError(name)
    return CLASSES.index(key)


def _one(path: Path, box, label: int) -> LabelledImage:
    return LabelledImage(path, np.asarray([box], np.float32), np.asarray([label], np.int64))


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def read_facial_expressions_boxed(root: Path, boxes_csv: Path) -> list[LabelledImage]:
    """Crops of the facial_expressions layout that have a face box in ``boxes_csv``."""
    from .photos import in_pixels, read_boxes

    boxes = read_boxes(boxes_csv)
    crops, _ = read_facial_expressions(root)
    out = []
    for crop in crops:
        box = boxes.get(crop.path.name)
        if box is None:
            continue
        w, h = _image_size(crop.path)
        out.append(_one(crop.path, in_pixels(box, w, h), crop.label))
    return out


def read_rafdb(root: Path, split: str | None = None) -> list[LabelledImage]:
    """RAF-DB basic; ``split`` "train" or "test" keeps the images of that prefix."""
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    out = []
    with open(label_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
                raise DatasetError(f"{label_file}:{number}: expected 'name label(1-7)': {line!r}")
            name = parts[0]
            if split and not name.startswith(split + "_"):
                continue
            stem = Path(name).stem
            box_file = root / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt"
            try:
                values = [float(v) for v in box_file.read_text(encoding="utf-8").split()]
            except (OSError, ValueError) as e:
                raise DatasetError(f"{box_file}: unreadable box for {name}: {e}") from e
            if len(values) != 4:
                raise DatasetError(f"{box_file}: expected 4 numbers, got {len(values)}")
            label = CLASSES.index(RAFDB_LABELS[int(parts[1]) - 1])
            out.append(_one(root / "Image" / "original" / name, values, label))
    return out


def read_sfew(
    root: Path, detect: Callable[[Path], tuple[float, float, float, float] | None] | None = None
) -> list[LabelledImage]:
    """SFEW class folders under ``root`` (one split, e.g. ``SFEW_2/Train``); each frame's
    face is the best face ``detect`` finds (default: MTCNN); frames without one are left
    out."""
    if detect is None:
        detect = _mtcnn_best_face
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = class_index(folder.name)
        except KeyError:
            raise DatasetError(f"{folder}: not an expression folder name") from None
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                box = detect(path)
                if box is not None:
                    out.append(_one(path, box, label))
    return out


def _mtcnn_best_face(path: Path):
    from .mtcnn import detect_faces
    from .preprocess import load_rgb

    faces = detect_faces(load_rgb(str(path)))
    return tuple(faces[0][:4]) if faces else None


def read_yolo(root: Path) -> list[LabelledImage]:
    """``root/images`` and ``root/labels`` (YOLO txt, normalised centre/size)."""
    out = []
    images = sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in images:
        label_file = root / "labels" / path.relative_to(root / "images").with_suffix(".txt")
        w, h = _image_size(path)
        boxes, labels = [], []
        if label_file.exists():
            for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    cls, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                    if len(parts) != 5 or not 0 <= cls < len(CLASSES):
                        raise ValueError
                except (ValueError, IndexError):
                    raise DatasetError(
                        f"{label_file}:{number}: expected 'class cx cy w h' with class 0-"
                        f"{len(CLASSES) - 1}: {line!r}"
                    ) from None
                boxes.append(
                    ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                )
                labels.append(cls)
        out.append(
            LabelledImage(
                path, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)
            )
        )
    return out


def read_lines(file: Path) -> list[LabelledImage]:
    """The paper's ``path x1,y1,x2,y2,class ...`` lines; paths relative to ``file``."""
    out = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            boxes, labels = [], []
            for item in parts[1:]:
                fields = item.split(",")
                try:
                    if len(fields) != 5:
                        raise ValueError
                    x1, y1, x2, y2 = map(float, fields[:4])
                    cls = int(fields[4])
                    if not 0 <= cls < len(CLASSES) or x2 <= x1 or y2 <= y1:
                        raise ValueError
                except ValueError:
                    raise DatasetError(
                        f"{file}:{number}: bad box {item!r} (want x1,y1,x2,y2,class with "
                        f"x2>x1, y2>y1, class 0-{len(CLASSES) - 1})"
                    ) from None
                boxes.append((x1, y1, x2, y2))
                labels.append(cls)
            out.append(
                LabelledImage(
                    file.parent / parts[0],
                    np.asarray(boxes, np.float32).reshape(-1, 4),
                    np.asarray(labels, np.int64),
                )
            )
    return out


def write_lines(images: list[LabelledImage], file: Path) -> None:
    """Writes ``images`` as the paper's lines (paths relative to ``file``), atomically."""
    rows = []
    for image in images:
        boxes = " ".join(
            f"{b[0]:.1f},{b[1]:.1f},{b[2]:.1f},{b[3]:.1f},{int(c)}"
            for b, c in zip(image.boxes, image.labels, strict=False)
        )
        rel = Path(image.path).resolve().relative_to(file.parent.resolve()).as_posix()
        rows.append(f"{rel} {boxes}".rstrip() + "\n")
    tmp = file.with_name(file.name + ".partial")
    tmp.write_text("".join(rows), encoding="utf-8")
    tmp.replace(file)


def read_dataset(path: Path, fmt: str, **options) -> list[LabelledImage]:
    """Any of :data:`FORMATS`; ``facial_expressions`` needs ``boxes_csv=``."""
    readers = {
        "facial_expressions": lambda: read_facial_expressions_boxed(path, options["boxes_csv"]),
        "rafdb": lambda: read_rafdb(path, options.get("split")),
        "sfew": lambda: read_sfew(path, options.get("detect")),
        "yolo": lambda: read_yolo(path),
        "lines": lambda: read_lines(path),
    }
    if fmt not in readers:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    return readers[fmt]()
