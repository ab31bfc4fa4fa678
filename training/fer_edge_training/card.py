"""Model-card figures from the runtime itself: runs ``fer-edge eval`` on the held-out set,
writes ``<model>.metrics.json`` (what ``tests/accuracy.rs`` holds the model to; with the
figures of ``quick.txt`` beside the dataset, the subset it uses under qemu) and a
confusion-matrix image.

    python -m fer_edge_training.card --binary ../target/release/fer-edge \\
        --model ../models/fer-yolo-mamba-nano.onnx --dataset ../tests/data/heldout/labels.txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .model import CLASSES


def parse_eval(text: str) -> dict:
    """The figures of ``fer-edge eval``'s table (see ``src/evaluate.rs``)."""
    lines = text.strip().splitlines()
    ap, faces = {}, {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] in CLASSES:
            faces[parts[0]] = int(parts[1])
            ap[parts[0]] = None if parts[2] == "-" else float(parts[2])
    summary = next(x for x in lines if x.startswith("images "))
    start = lines.index(next(x for x in lines if x.startswith("confusion"))) + 1
    confusion = [[int(v) for v in lines[start + i].split()] for i in range(len(CLASSES))]
    last = lines[-1].split()
    if last[0] != "mAP50":
        raise ValueError(f"eval output does not end with mAP50: {lines[-1]!r}")
    return {
        "map50": float(last[1]),
        "accuracy": float(summary.rsplit("expression accuracy", 1)[1]),
        "recall": float(summary.split("recall")[1].split(")")[0]),
        "ap": ap,
        "faces": faces,
        "confusion": confusion,
    }


def draw_confusion(confusion: list[list[int]], path: Path, cell: int = 56) -> None:
    """Row-normalised confusion matrix as a PNG (rows: labelled, columns: detected)."""
    m = np.asarray(confusion, np.float64)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n, margin = len(CLASSES), 90
    im = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    d = ImageDraw.Draw(im)
    for i in range(n):
        d.text((4, margin + i * cell + cell // 2 - 5), CLASSES[i][:9], fill="black")
        d.text((margin + i * cell + 4, margin - 16), CLASSES[i][:7], fill="black")
        for j in range(n):
            shade = int(255 * (1 - share[i, j]))
            x, y = margin + j * cell, margin + i * cell
            d.rectangle(
                [x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline="grey"
            )
            d.text(
                (x + 6, y + cell // 2 - 5),
                f"{int(m[i, j])}",
                fill="black" if shade > 110 else "white",
            )
    d.text((4, 4), "labelled (rows) vs detected (columns)", fill="black")
    im.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    args = ap.parse_args(argv)

    def run_eval(dataset: Path) -> dict:
        out = subprocess.run(
            [args.binary, "eval", "--model", str(args.model), "--dataset", str(dataset)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(out)
        return parse_eval(out)

    figures = run_eval(args.dataset)
    quick = args.dataset.with_name("quick.txt")
    if quick.exists():  # the subset tests/accuracy.rs uses under qemu
        subset = run_eval(quick)
        figures["quick"] = {"map50": subset["map50"], "accuracy": subset["accuracy"]}
    metrics = args.model.with_suffix(".metrics.json")
    metrics.write_text(json.dumps(figures, indent=1) + "\n")
    draw_confusion(figures["confusion"], args.model.with_suffix(".confusion.png"))
    print(f"wrote {metrics} and {args.model.with_suffix('.confusion.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
