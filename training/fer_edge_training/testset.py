"""Write the held-out test set: kiosk-like frames composed from the test identities only.

    python -m fer_edge_training.testset --data ../../shared/data/facial_expressions \\
        --out ../tests/data/heldout --frames 120 --size 320 --seed 0

Frames are composed as for training (:func:`fer_edge_training.synth.compose_frame`, not
letterboxed: camera-shaped, ``size`` px on the long side), from the faces of the
``test`` split of :func:`fer_edge_training.data.split_by_identity` with the same seed as
training, so no person in them was seen in training or validation. Faces are drawn
class-balanced (power 1: every expression equally often) so the rare expressions get an
AP at all; those few faces repeat. Written as JPEG (quality 90) with ``labels.txt`` in
the paper's lines format (``path x1,y1,x2,y2,class ...``), which ``fer-edge eval`` and
:func:`fer_edge_training.datasets.read_lines` read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .data import read_facial_expressions, split_by_identity
from .datasets import LabelledImage, write_lines
from .synth import (
    CLOSE_UP_FRAMES,
    boxed_faces,
    class_balanced_weights,
    compose_frame,
    load_backgrounds,
    read_boxes,
)
from .train import DEFAULT_BOXES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="facial_expressions clone")
    ap.add_argument("--boxes", type=Path, default=DEFAULT_BOXES)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0, help="split seed (as in training)")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument(
        "--close-ups", type=float, default=CLOSE_UP_FRAMES, help="share of close-up frames"
    )
    args = ap.parse_args(argv)

    crops, _ = read_facial_expressions(args.data)
    faces = boxed_faces(split_by_identity(crops, args.seed)[args.split], read_boxes(args.boxes))
    weights = class_balanced_weights([f.label for f in faces], 7, power=1.0)
    backgrounds = load_backgrounds()
    rng = np.random.default_rng([args.seed, 2])
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(args.frames):
        frame, boxes, labels = compose_frame(
            faces, weights, backgrounds, args.size, rng, letterbox=False, close_ups=args.close_ups
        )
        path = images_dir / f"{args.split}_{i:04d}.jpg"
        Image.fromarray(frame).save(path, quality=90)
        images.append(LabelledImage(path, boxes, labels))
    write_lines(images, args.out / "labels.txt")
    counts = np.bincount(np.concatenate([im.labels for im in images]), minlength=7)
    print(f"wrote {len(images)} frames, faces per class {counts.tolist()}, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
