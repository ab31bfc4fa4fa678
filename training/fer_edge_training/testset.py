"""Write the held-out test set: camera-like frames made of test photos only.

    python -m fer_edge_training.testset --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus \\
        --out ../tests/data/heldout --frames 120 --size 320 --seed 0

Frames are composed as for training (:func:`fer_edge_training.mosaic.compose_frame`, not
letterboxed: camera-shaped, ``size`` px on the long side) from the LFW photos of the test
identities and FER+'s test split, so no person or picture in them was seen in training
or validation. Photos are drawn class-balanced (power 1: every expression equally often)
so the rare expressions get an AP at all; their few faces repeat. Every face of a
held-out frame has an expression label, since the lines format has no "face, no label":
only LFW photos with one face and FER+ faces with a majority label are drawn, a face cut
by a mosaic cell keeps its label as long as it keeps its box, and a frame with any face
without a label is drawn again. Written as JPEG (quality 90) with ``labels.txt`` in the
paper's lines format (``path x1,y1,x2,y2,class ...``), which ``fer-edge eval`` and
:func:`fer_edge_training.datasets.read_lines` read; ``quick.txt`` holds its first
:data:`QUICK` lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import LabelledImage, write_lines
from .ferplus import read_ferplus
from .model import CLASSES
from .mosaic import MIN_VISIBLE, Sources, compose_frame, labels_of
from .photos import add_source_arguments, ferplus_photos, lfw_photos

#: Frames listed in ``quick.txt`` (the accuracy test under qemu).
QUICK = 12


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(ap)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", choices=("val", "test"))
    args = ap.parse_args(argv)

    lfw = [
        p
        for p in lfw_photos(args.lfw, args.data, args.lfw_boxes, args.splits)[args.split]
        if p.label >= 0 and len(p.boxes) == 1
    ]
    ferplus = [f for f in read_ferplus(args.ferplus)[0][args.split] if f.label >= 0]
    sources = Sources(lfw, ferplus_photos(ferplus), power=1.0)
    rng = np.random.default_rng([args.seed, 2])
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    while len(images) < args.frames:
        frame, boxes, targets = compose_frame(
            sources, args.size, rng, letterbox=False, min_labelled=MIN_VISIBLE
        )
        labels = labels_of(targets)
        if len(labels) == 0 or (labels < 0).any():
            continue
        path = images_dir / f"{args.split}_{len(images):04d}.jpg"
        Image.fromarray(frame).save(path, quality=90)
        images.append(LabelledImage(path, boxes, labels))
    write_lines(images, args.out / "labels.txt")
    write_lines(images[:QUICK], args.out / "quick.txt")
    counts = np.bincount(np.concatenate([im.labels for im in images]), minlength=len(CLASSES))
    print(f"wrote {len(images)} frames, faces per class {counts.tolist()}, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
