"""FER+ (FER2013 faces with Microsoft's FER+ votes) in the layout FER+'s own scripts write.

``fer2013new.csv`` (columns ``Usage, Image name`` and 10 vote counts: neutral, happiness,
surprise, sadness, anger, disgust, fear, contempt, unknown, NF) beside the folders
``FER2013Train/`` (Usage ``Training``), ``FER2013Valid/`` (``PublicTest``) and
``FER2013Test/`` (``PrivateTest``); each named image is read as ``.png`` or, failing
that, ``.jpg`` (the reduced copy in ``shared/data/ferplus`` re-encoded them).

Per face:

* ``votes``: the 7 expression classes of :data:`~fer_edge_training.model.CLASSES` (contempt
  has no class here, unknown and not-a-face are no expression);
* ``label``: the majority label as FER+'s ``majority`` mode: single votes are dropped as
  outliers, then the category with more than half of the votes left; -1 when none has it;
* ``target``: FER+'s ``probability`` scheme over our classes: single votes are dropped as
  outliers, then the distribution of the remaining expression votes.

Dropped: rows without an image name (FER+ removed them), faces whose most-voted category
is unknown or not a face, faces with no expression vote left, faces whose majority is
contempt. Byte-identical images: FER2013 holds the same picture more than once, some of
them across splits; a test or validation face whose bytes also appear in an earlier split
(train, then valid) is dropped, so no test figure is measured on a training picture.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import CLASSES

LABEL_FILE = "fer2013new.csv"
#: Usage value -> (our split name, folder), in de-duplication order.
SPLITS = {
    "Training": ("train", "FER2013Train"),
    "PublicTest": ("val", "FER2013Valid"),
    "PrivateTest": ("test", "FER2013Test"),
}
#: The vote columns of ``fer2013new.csv``, in file order.
VOTE_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
#: Votes at or below this count are outliers in FER+'s schemes.
OUTLIER_VOTES = 1


@dataclass(frozen=True)
class FerPlusFace:
    """One FER+ face: the image, its majority label (-1: none) and soft target ``[7]``."""

    path: Path
    label: int
    target: np.ndarray = field(compare=False)


def _image_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, (folder / name).with_suffix(".jpg")):
        if candidate.is_file():
            return candidate
    return None


def votes_to_classes(votes: np.ndarray) -> np.ndarray:
    """The 10 vote columns -> votes for each of our 7 classes (CLASSES order)."""
    return np.array([votes[VOTE_COLUMNS.index(c)] for c in CLASSES], np.float32)


def majority(votes: np.ndarray) -> str | None:
    """The category (vote column name) with more than half of the votes once single votes
    are dropped, if any."""
    votes = np.where(votes > OUTLIER_VOTES, votes, 0)
    best = int(np.argmax(votes))
    return VOTE_COLUMNS[best] if votes[best] > 0.5 * votes.sum() else None


def soft_target(votes: np.ndarray) -> np.ndarray | None:
    """FER+'s probability target over our classes, None when no expression vote is left
    once single votes are dropped."""
    ours = votes_to_classes(votes)
    ours[ours <= OUTLIER_VOTES] = 0
    total = ours.sum()
    return ours / total if total > 0 else None


def read_ferplus(root: str | Path) -> tuple[dict[str, list[FerPlusFace]], Counter]:
    """Faces by split (``train``, ``val``, ``test``) and a count of what was dropped and
    why (see the module docstring)."""
    root = Path(root)
    splits: dict[str, list[FerPlusFace]] = {name: [] for name, _ in SPLITS.values()}
    dropped: Counter = Counter()
    seen: set[bytes] = set()
    rows_by_split: dict[str, list[tuple[Path, np.ndarray]]] = {n: [] for n, _ in SPLITS.values()}
    with open(root / LABEL_FILE, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if line == 1:
                continue
            if len(row) != 2 + len(VOTE_COLUMNS) or row[0] not in SPLITS:
                raise ValueError(f"{root / LABEL_FILE}:{line}: not a FER+ label row: {row}")
            if not row[1].strip():
                dropped["no image name"] += 1
                continue
            split, folder = SPLITS[row[0]]
            path = _image_path(root / folder, row[1].strip())
            if path is None:
                dropped["missing image"] += 1
                continue
            rows_by_split[split].append((path, np.array(row[2:], np.float32)))
    for split, _ in SPLITS.values():
        fresh: set[bytes] = set()
        for path, votes in rows_by_split[split]:
            top = VOTE_COLUMNS[int(np.argmax(votes))]
            if top in ("unknown", "NF"):
                dropped[f"mostly {top}"] += 1
                continue
            major = majority(votes)
            if major == "contempt":
                dropped["contempt"] += 1
                continue
            target = soft_target(votes)
            if target is None:
                dropped["no expression vote"] += 1
                continue
            digest = hashlib.sha1(path.read_bytes()).digest()
            if digest in seen:
                dropped[f"{split}: duplicate of an earlier split"] += 1
                continue
            fresh.add(digest)
            label = CLASSES.index(major) if major in CLASSES else -1
            splits[split].append(FerPlusFace(path, label, target))
        seen |= fresh
    return splits, dropped
