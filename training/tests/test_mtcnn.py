"""Tests for the compact MTCNN face detector (fer_edge_training.mtcnn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_edge_training.mtcnn import WEIGHTS_DIR, detect_faces, nms

REPO = Path(__file__).resolve().parents[2]
OBAMA = REPO / "samples" / "obama.jpg"
DATASET = Path("/work/shared/data/facial_expressions")
CONFIDENT = 0.95


def test_weights_are_vendored():
    for name in ("pnet.pt", "rnet.pt", "onet.pt", "LICENSE"):
        assert (WEIGHTS_DIR / name).is_file(), name
    assert "MIT License" in (WEIGHTS_DIR / "LICENSE").read_text()


def test_nms_union_and_min():
    boxes = np.array(
        [
            [0, 0, 9, 9],  # A, best
            [1, 1, 10, 10],  # heavy overlap with A -> dropped
            [20, 20, 29, 29],  # disjoint -> kept
            [2, 2, 5, 5],  # inside A: IoU small (kept by union), min-overlap 1 (dropped by min)
        ],
        dtype=float,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [3, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # A threshold of 1 keeps everything, ordered by score.
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]


def test_obama_one_confident_face():
    rgb = np.asarray(Image.open(OBAMA).convert("RGB"))
    h, w = rgb.shape[:2]
    faces = detect_faces(rgb)
    confident = [f for f in faces if f[4] >= CONFIDENT]
    assert len(confident) == 1, faces
    x1, y1, x2, y2, score = confident[0]
    assert faces[0] == confident[0]  # best first
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert w / 4 < cx < 3 * w / 4, (cx, w)
    assert cy < h / 2, (cy, h)
    assert 0.25 * w <= x2 - x1 <= 0.75 * w, (x2 - x1, w)
    assert score > 0.99


def test_blank_image_has_no_face():
    assert detect_faces(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detect_faces(np.full((120, 120), 128, np.uint8)) == []


def test_grey_dataset_crop():
    images = DATASET / "images"
    if not images.is_dir():
        pytest.skip(f"DATASET MISSING: {images} not found, grey-crop detection NOT tested")
    grey = None
    for path in sorted(images.glob("*.jpg"))[:50]:
        with Image.open(path) as im:
            if im.mode == "L":
                grey = np.asarray(im)
                break
    if grey is None:
        pytest.skip(f"NO GREY IMAGE among the first 50 in {images}: grey path NOT tested")
    faces = detect_faces(grey)  # HxW, replicated to 3 channels inside
    assert faces, "no face in a dataset crop"
    x1, y1, x2, y2, score = faces[0]
    assert score > 0.9
    h, w = grey.shape
    # A tight crop: the face is large and roughly central.
    assert x2 - x1 > 0.3 * w
    assert 0 < (x1 + x2) / 2 < w and 0 < (y1 + y2) / 2 < h
    rep = np.repeat(grey[:, :, None], 3, axis=2)
    assert detect_faces(rep) == faces


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        detect_faces(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError):
        detect_faces(np.zeros((50, 50, 2), np.uint8))
