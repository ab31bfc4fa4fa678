"""Write the recorded sequence of the service's end-to-end test and demo: one person of the
test split shows one expression, then another, then leaves the picture.

    python -m fer_edge_training.sequence --data ../../shared/data/facial_expressions \\
        --out ../samples/sequence --binary ../target/release/fer-edge \\
        --model ../models/fer-yolo-mamba-nano.onnx

The frames are 320x240 JPEGs on a public-domain scikit-image photo: ``--first`` frames of
the person showing ``--from`` (happiness), ``--second`` frames of the same person showing
``--to`` (neutral), with the face at the same place, then ``--empty`` frames without
anyone. People of the ``test`` split (never seen in training) with both expressions are
tried; of those whose two frames the model labels right, each with a single face, as
``fer-edge detect`` reports them, the one with the highest lower score is written: the
test asserts the service's events, not the model's accuracy, which ``tests/accuracy.rs``
covers. Rerun this after retraining if the end-to-end test says the sequence no longer
gives ``update``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from .data import read_facial_expressions, split_by_identity
from .model import CLASSES
from .synth import (
    BoxedFace,
    blend,
    boxed_faces,
    face_mask,
    load_backgrounds,
    open_face,
    read_boxes,
)
from .train import DEFAULT_BOXES

WIDTH, HEIGHT = 320, 240
#: The face's width as a share of the frame height, and its centre.
FACE_WIDTH = 0.42
CENTRE = (0.5, 0.5)


def background() -> np.ndarray:
    """The coffee photo (public domain, scikit-image), 320x240."""
    photo = load_backgrounds()[3]
    return np.asarray(Image.fromarray(photo).resize((WIDTH, HEIGHT), Image.BILINEAR))


def frame_with(face: BoxedFace, canvas: np.ndarray) -> np.ndarray:
    """``canvas`` with ``face`` pasted at the fixed place."""
    crop, (bx1, by1, bx2, by2) = open_face(face)
    scale = FACE_WIDTH * HEIGHT / max(bx2 - bx1, 1.0)
    cw, ch = round(crop.width * scale), round(crop.height * scale)
    box = (bx1 * scale, by1 * scale, bx2 * scale, by2 * scale)
    pixels = np.asarray(crop.resize((cw, ch), Image.BILINEAR), dtype=np.float32)
    alpha = face_mask(cw, ch, box, 0.25)[..., None]
    x0 = round(CENTRE[0] * WIDTH - (box[0] + box[2]) / 2)
    y0 = round(CENTRE[1] * HEIGHT - (box[1] + box[3]) / 2)
    out = canvas.copy()
    blend(out, pixels, alpha, x0, y0)
    return out


def detect(binary: Path, model: Path, images: list[Path]) -> list[list[dict]]:
    """The faces ``fer-edge detect`` reports for each image."""
    run = subprocess.run(
        [str(binary), "detect", "--model", str(model), *map(str, images)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [json.loads(line)["faces"] for line in run.stdout.splitlines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="facial_expressions clone")
    ap.add_argument("--boxes", type=Path, default=DEFAULT_BOXES)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--binary", type=Path, required=True, help="the fer-edge binary")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--from", dest="first_expression", default="happiness", choices=CLASSES)
    ap.add_argument("--to", dest="second_expression", default="neutral", choices=CLASSES)
    ap.add_argument("--first", type=int, default=10)
    ap.add_argument("--second", type=int, default=12)
    ap.add_argument("--empty", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="split seed (as in training)")
    args = ap.parse_args(argv)

    crops, _ = read_facial_expressions(args.data)
    test = split_by_identity(crops, args.seed)["test"]
    faces = boxed_faces(test, read_boxes(args.boxes))
    by_person: dict[tuple[str, int], list[BoxedFace]] = defaultdict(list)
    identity = {crop.path: crop.identity for crop in test}
    for face in faces:
        by_person[identity[face.path], face.label].append(face)
    first, second = CLASSES.index(args.first_expression), CLASSES.index(args.second_expression)
    people = sorted(p for p, label in by_person if label == first and (p, second) in by_person)
    canvas = background()
    with tempfile.TemporaryDirectory() as tmp:
        candidates = []
        for person in people:
            for a in by_person[person, first][:3]:
                for b in by_person[person, second][:3]:
                    index = len(candidates)
                    paths = (Path(tmp) / f"{index}a.jpg", Path(tmp) / f"{index}b.jpg")
                    Image.fromarray(frame_with(a, canvas)).save(paths[0], quality=90)
                    Image.fromarray(frame_with(b, canvas)).save(paths[1], quality=90)
                    candidates.append((person, a, b, paths))
        found = detect(args.binary, args.model, [p for c in candidates for p in c[3]])
    right = [
        (candidate, found[2 * i], found[2 * i + 1])
        for i, candidate in enumerate(candidates)
        if [f["expression"] for f in found[2 * i]] == [args.first_expression]
        and [f["expression"] for f in found[2 * i + 1]] == [args.second_expression]
    ]
    if not right:
        raise SystemExit(f"no test-split person of {len(people)} is labelled right in both frames")
    # The clearest case: the highest lower score of the two frames.
    (person, a, b, _), seen_a, seen_b = max(
        right, key=lambda r: min(r[1][0]["score"], r[2][0]["score"])
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("frame_*.jpg"):
        old.unlink()
    frames = (
        [frame_with(a, canvas)] * args.first
        + [frame_with(b, canvas)] * args.second
        + [canvas] * args.empty
    )
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(args.out / f"frame_{i:03d}.jpg", quality=90)
    print(
        f"wrote {len(frames)} frames of {person} ({a.path.name} -> {b.path.name}) to {args.out};"
        f" model: {seen_a[0]['expression']} {seen_a[0]['score']:.2f},"
        f" then {seen_b[0]['expression']} {seen_b[0]['score']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
