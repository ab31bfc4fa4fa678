"""Composed training frames: real crops on real backgrounds, boxes where the faces are."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_edge_training.data import read_facial_expressions
from fer_edge_training.datasets import LabelledImage
from fer_edge_training.synth import (
    CLOSE_UP_SCALE,
    boxed_faces,
    class_balanced_weights,
    compose_frame,
    faces_from_images,
    load_backgrounds,
    read_boxes,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "facial_expressions"
BOXES = Path(__file__).resolve().parents[1] / "data" / "facial_expressions_boxes.csv"


def test_class_balanced_weights():
    labels = [0] * 100 + [1] * 4 + [2]
    w = class_balanced_weights(labels, 4, power=0.5)
    per_class = [w[np.asarray(labels) == c].sum() for c in range(3)]
    assert np.isclose(sum(per_class), 1.0)
    # class share ~ count ** 0.5: 10 : 2 : 1
    np.testing.assert_allclose(np.asarray(per_class) / per_class[2], [10, 2, 1], rtol=1e-9)
    assert np.allclose(class_balanced_weights(labels, 4, power=0.0), 1 / len(labels))


@pytest.fixture(scope="module")
def real_faces():
    if not SHARED.is_dir():
        pytest.skip(f"SKIPPED: {SHARED} is missing (the shared data sits beside the repo)")
    crops, _ = read_facial_expressions(SHARED)
    return boxed_faces(crops[:300], read_boxes(BOXES))


def test_frames_hold_the_pasted_faces(real_faces):
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(40):
        img, boxes, labels = compose_frame(real_faces, None, backgrounds, 160, rng)
        assert img.shape == (160, 160, 3) and img.dtype == np.uint8
        assert len(boxes) == len(labels) >= 1
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= 0 and boxes.max() <= 160
        assert set(labels.tolist()) <= set(f.label for f in real_faces)
        counts.append(len(boxes))
        # letterbox padding (top-left placement) is exactly grey 128
        if (img[-1] == 128).all():
            assert (img[-1, :, 0] == 128).all()
    assert max(counts) >= 3  # several faces per frame happen
    # the same seed gives the same frame (resumable training)
    a = compose_frame(real_faces, None, backgrounds, 96, np.random.default_rng([1, 2]))
    b = compose_frame(real_faces, None, backgrounds, 96, np.random.default_rng([1, 2]))
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_close_ups_and_soft_targets(real_faces):
    """Some frames hold one face filling most of the frame (a person at the kiosk, and the
    framing of tight crops); with ``soft`` the labels are teacher mixtures."""
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(5)
    teacher = np.full(7, 1 / 7, np.float32)
    taught = [dataclasses.replace(f, teacher=teacher) for f in real_faces]
    widest = []
    for _ in range(60):
        img, boxes, targets = compose_frame(
            taught, None, backgrounds, 160, rng, letterbox=False, soft=0.3
        )
        assert targets.shape == (len(boxes), 7) and targets.dtype == np.float32
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
        assert np.isclose(targets.max(1), 0.7 + 0.3 / 7).all()
        if len(boxes) == 1:
            widest.append(float(boxes[0, 2] - boxes[0, 0]) / min(img.shape[:2]))
    assert max(widest, default=0) >= CLOSE_UP_SCALE[0] * 0.9, widest


def test_face_pixels_are_inside_the_box(real_faces):
    """A face pasted on a flat background changes the frame mostly inside its box."""
    flat = [np.full((200, 200, 3), 40, np.uint8)]
    rng = np.random.default_rng(3)
    inside_share = []
    for _ in range(10):
        img, boxes, _ = compose_frame(real_faces[:50], None, flat, 128, rng, letterbox=False)
        diff = np.abs(img.astype(int) - np.median(img, axis=(0, 1))).sum(-1) > 60
        mask = np.zeros_like(diff)
        for x1, y1, x2, y2 in boxes:
            mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
        if diff.sum():
            inside_share.append((diff & mask).sum() / diff.sum())
    assert np.mean(inside_share) > 0.7, inside_share


def test_full_frame_datasets_paste_a_region_around_the_face(tmp_path):
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 120:140] = 255  # the "face"
    Image.fromarray(frame).save(tmp_path / "f.png")
    image = LabelledImage(
        tmp_path / "f.png", np.array([[120, 40, 140, 60]], np.float32), np.array([2])
    )
    (face,) = faces_from_images([image], context=0.5)
    assert face.region == (110, 30, 150, 70) and face.label == 2
    rng = np.random.default_rng(0)
    img, boxes, labels = compose_frame([face], None, [np.full((50, 50, 3), 0, np.uint8)], 64, rng)
    assert len(labels) >= 1 and set(labels.tolist()) == {2}
    for x1, y1, x2, y2 in boxes:
        centre = img[int((y1 + y2) / 2), int((x1 + x2) / 2)]
        assert centre.mean() > 150  # the bright face sits at the centre of its box
