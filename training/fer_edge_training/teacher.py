"""Soft expression labels from a teacher: face-api's expression net on every boxed face.

    python -m fer_edge_training.teacher --data ../../shared/data/facial_expressions \\
        --face-api-weights package/model [--out data/facial_expressions_teacher.csv]

``facial_expressions`` has one hard label per face, and many of them are debatable (a
faint smile labelled neutral, a grimace labelled disgust). Training against a mixture of
the hard label and a strong classifier's probabilities (Hinton et al. 2015, "Distilling
the knowledge in a neural network") gives the detector's expression head a softer, less
noisy target. The teacher is face-api's expression net
(:class:`~fer_edge_training.peers.FaceApiExpressionNet`, MIT), fed each image's MTCNN box
(``data/facial_expressions_boxes.csv``) exactly as :mod:`~fer_edge_training.compare`
feeds it.

Output: a CSV ``image,<class>...`` with 7 probabilities in
:data:`~fer_edge_training.model.CLASSES` order, one row per image with a face box (all
splits: training reads only its own split's rows, so nothing leaks into validation or
test). ``train.py --teacher CSV --soft A`` uses it.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import read_facial_expressions
from .model import CLASSES
from .peers import FaceApiExpressionNet, add_weights_argument
from .photos import in_pixels, read_boxes

HERE = Path(__file__).resolve().parents[1]
DEFAULT_BOXES = HERE / "data" / "facial_expressions_boxes.csv"
DEFAULT_OUT = HERE / "data" / "facial_expressions_teacher.csv"


def read_teacher(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Teacher probabilities by image name (``float32 [7]``, CLASSES order)."""
    table = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CLASSES if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: no column for {', '.join(missing)}")
        for row in reader:
            p = np.array([float(row[c]) for c in CLASSES], np.float32)
            table[row["image"]] = p / p.sum()
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="facial_expressions root")
    ap.add_argument("--boxes", type=Path, default=DEFAULT_BOXES, help="MTCNN face boxes CSV")
    add_weights_argument(ap, "face-api-weights", "FACE_API_WEIGHTS", "face-api's model/ folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write")
    args = ap.parse_args(argv)

    crops, _ = read_facial_expressions(args.data)
    boxes = read_boxes(args.boxes)
    teacher = FaceApiExpressionNet(args.face_api_weights)
    rows = []
    for crop in tqdm(crops, desc="teacher"):
        box = boxes.get(crop.path.name)
        if box is None:
            continue
        with Image.open(crop.path) as im:
            image = np.asarray(im.convert("RGB"))
        h, w = image.shape[:2]
        with torch.inference_mode():
            p = teacher.predict(teacher.face_region(image, in_pixels(box, w, h)))
        rows.append([crop.path.name] + [f"{v:.4f}" for v in p])
    tmp = args.out.with_name(args.out.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *CLASSES])
        writer.writerows(rows)
    os.replace(tmp, args.out)
    print(f"{len(rows)} faces -> {args.out}")


if __name__ == "__main__":
    main()
