"""Write the recorded sequence of the service's end-to-end test and demo: one person of the
test identities shows one expression, then another, then leaves the picture.

    python -m fer_edge_training.sequence --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus \\
        --out ../samples/sequence --binary ../target/release/fer-edge \\
        --model ../models/fer-yolo-mamba-nano.onnx

The frames are 320x240 JPEGs: ``--first`` frames of a whole LFW colour photo of the
person showing ``--from`` (happiness), ``--second`` frames of another photo of the same
person showing ``--to`` (neutral), each scaled to cover the frame (LFW photos are centred
on the face, so the face stays in place), then ``--empty`` frames of a public-domain
scikit-image photo without anyone, in which the model must find no face. People of the
``test`` identities (never seen in training) with both expressions are tried; of those
whose two frames the model labels right, each with a single face, as ``fer-edge detect``
reports them, the one with the highest lower score is written: the test asserts the
service's events, not the model's accuracy, which ``tests/accuracy.rs`` covers. Rerun
this after retraining if the end-to-end test says the sequence no longer gives
``update``.
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

from .data import identity_of
from .model import CLASSES
from .photos import Photo, add_source_arguments, lfw_photos

WIDTH, HEIGHT = 320, 240


def empty_frame() -> np.ndarray:
    """scikit-image's brick wall photo (public domain), 320x240."""
    import skimage

    with Image.open(Path(skimage.__file__).parent / "data" / "brick.png") as im:
        return np.asarray(im.convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR))


def frame_of(photo: Photo) -> np.ndarray:
    """``photo`` scaled to cover a 320x240 frame, centred."""
    with Image.open(photo.path) as im:
        scale = max(WIDTH / im.width, HEIGHT / im.height)
        w, h = im.width * scale, im.height * scale
        box = ((w - WIDTH) / 2 / scale, (h - HEIGHT) / 2 / scale)
        box = (*box, box[0] + WIDTH / scale, box[1] + HEIGHT / scale)
        return np.asarray(im.convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR, box=box))


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
    add_source_arguments(ap)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--binary", type=Path, required=True, help="the fer-edge binary")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--from", dest="first_expression", default="happiness", choices=CLASSES)
    ap.add_argument("--to", dest="second_expression", default="neutral", choices=CLASSES)
    ap.add_argument("--first", type=int, default=10)
    ap.add_argument("--second", type=int, default=12)
    ap.add_argument("--empty", type=int, default=16)
    args = ap.parse_args(argv)

    by_person: dict[tuple[str, int], list[Photo]] = defaultdict(list)
    for photo in lfw_photos(args.lfw, args.data, args.lfw_boxes, args.splits)["test"]:
        if photo.label >= 0 and len(photo.boxes) == 1:
            by_person[identity_of(photo.path.name), photo.label].append(photo)
    first, second = CLASSES.index(args.first_expression), CLASSES.index(args.second_expression)
    people = sorted(p for p, label in by_person if label == first and (p, second) in by_person)
    with tempfile.TemporaryDirectory() as tmp:
        candidates = []
        for person in people:
            for a in by_person[person, first][:3]:
                for b in by_person[person, second][:3]:
                    index = len(candidates)
                    paths = (Path(tmp) / f"{index}a.jpg", Path(tmp) / f"{index}b.jpg")
                    Image.fromarray(frame_of(a)).save(paths[0], quality=90)
                    Image.fromarray(frame_of(b)).save(paths[1], quality=90)
                    candidates.append((person, a, b, paths))
        empty = Path(tmp) / "empty.jpg"
        Image.fromarray(empty_frame()).save(empty, quality=90)
        *found, in_empty = detect(
            args.binary, args.model, [p for c in candidates for p in c[3]] + [empty]
        )
    if in_empty:
        raise SystemExit(f"the model finds a face in the empty frame: {in_empty}")
    right = [
        (candidate, found[2 * i], found[2 * i + 1])
        for i, candidate in enumerate(candidates)
        if [f["expression"] for f in found[2 * i]] == [args.first_expression]
        and [f["expression"] for f in found[2 * i + 1]] == [args.second_expression]
    ]
    if not right:
        raise SystemExit(f"no test person of {len(people)} is labelled right in both frames")
    # The clearest case: the highest lower score of the two frames.
    (person, a, b, _), seen_a, seen_b = max(
        right, key=lambda r: min(r[1][0]["score"], r[2][0]["score"])
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("frame_*.jpg"):
        old.unlink()
    frames = [frame_of(a)] * args.first + [frame_of(b)] * args.second
    frames += [empty_frame()] * args.empty
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
