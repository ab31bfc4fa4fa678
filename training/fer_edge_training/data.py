"""Labelled face crops of the `facial_expressions` repository and identity-disjoint splits.

Reads an unchanged clone of the upstream repository (or the reduced copy in
``shared/data/facial_expressions``, which keeps its layout): ``data/legend.csv`` with
columns ``user.id,image,emotion`` and ``images/<image>``. Emotions are matched to
:data:`~fer_edge_training.model.CLASSES` by name, case-insensitively; ``contempt`` has no
class and is dropped. An image listed twice with different emotions is dropped too.

``data/500_picts_satz.csv`` re-labels 500 of the same images and disagrees with
``legend.csv`` on about half of them; it is not used (the legend is the repository's
primary label file).

Identities: LFW-style names ``First_Last_0001.jpg`` and the other series
(``HrithikRoshan12.jpg``, ``Avinash_3.jpg``, ``facial-expressions_2868588k.jpg``) name
the person before a trailing number, so the identity is the stem without it. Splits are
made over identities, never files, so no person is in two splits.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .model import CLASSES

#: Label file of the repository, relative to its root.
LEGEND = Path("data") / "legend.csv"
#: Image folder of the repository, relative to its root.
IMAGES = Path("images")

_TRAILING_INDEX = re.compile(r"^(.*?)[_-]?\d+k?$")


@dataclass(frozen=True)
class FaceCrop:
    """One labelled image: its path, class index and the person's identity."""

    path: Path
    label: int
    identity: str


def identity_of(file_name: str) -> str:
    """The person an image shows, from its file name (see the module docstring)."""
    stem = Path(file_name).stem
    match = _TRAILING_INDEX.match(stem)
    return match.group(1) if match and match.group(1) else stem


def read_facial_expressions(root: str | Path) -> tuple[list[FaceCrop], Counter]:
    """The labelled crops under ``root``, sorted by file name, and a count of what was
    dropped and why (``contempt``, ``conflicting labels``, ``missing image``)."""
    root = Path(root)
    class_of = {name: i for i, name in enumerate(CLASSES)}
    labels: dict[str, set[str]] = {}
    with open(root / LEGEND, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            labels.setdefault(row["image"], set()).add(row["emotion"].strip().lower())
    dropped: Counter = Counter()
    crops = []
    for name in sorted(labels):
        emotions = labels[name]
        if len(emotions) > 1:
            dropped["conflicting labels"] += 1
            continue
        (emotion,) = emotions
        if emotion not in class_of:
            dropped[emotion] += 1
            continue
        path = root / IMAGES / name
        if not path.is_file():
            dropped["missing image"] += 1
            continue
        crops.append(FaceCrop(path, class_of[emotion], identity_of(name)))
    return crops, dropped


def split_by_identity(
    crops: list[FaceCrop], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[FaceCrop]]:
    """Train/val/test lists with no identity in two of them: identities are shuffled
    with ``seed`` and dealt to the split furthest below its target share of images."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions {fractions} do not sum to 1")
    by_identity: dict[str, list[FaceCrop]] = {}
    for crop in crops:
        by_identity.setdefault(crop.identity, []).append(crop)
    identities = sorted(by_identity)
    random.Random(seed).shuffle(identities)
    names = ("train", "val", "test")
    splits: dict[str, list[FaceCrop]] = {name: [] for name in names}
    total = len(crops)
    for identity in identities:
        deficit = [fractions[i] * total - len(splits[n]) for i, n in enumerate(names)]
        splits[names[deficit.index(max(deficit))]].extend(by_identity[identity])
    return splits


def write_splits(splits: dict[str, list[FaceCrop]], root: str | Path, out_dir: str | Path):
    """Writes ``<split>.txt`` files: one ``image-path-relative-to-root class-index`` a line."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, crops in splits.items():
        lines = [f"{c.path.relative_to(root).as_posix()} {c.label}\n" for c in crops]
        tmp = out_dir / f".{name}.txt.partial"
        tmp.write_text("".join(sorted(lines)), encoding="utf-8")
        tmp.replace(out_dir / f"{name}.txt")
