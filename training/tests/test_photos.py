"""Whole labelled photos: MTCNN box files, the centre face rule, LFW photos labelled by
``legend.csv`` and split by identity (on conftest's ``tiny_data``)."""

import numpy as np
import pytest

from fer_edge_training.ferplus import read_ferplus
from fer_edge_training.model import CLASSES
from fer_edge_training.photos import (
    FERPLUS_BOX,
    centre_face,
    ferplus_photos,
    lfw_photos,
    read_face_boxes,
)


def test_face_boxes_keep_every_confident_face_and_images_without_one(tmp_path):
    csv = tmp_path / "boxes.csv"
    csv.write_text(
        "image,x1,y1,x2,y2,score,faces,width,height\n"
        "a/a.jpg,1,2,11,12,0.99,2,150,150\n"
        "a/a.jpg,50,50,60,62,0.95,2,150,150\n"
        "b/b.jpg,5,5,9,9,0.72,1,150,150\n"
        "c/c.jpg,,,,,,0,150,150\n"
    )
    boxes = read_face_boxes(csv)
    assert boxes["a/a.jpg"].tolist() == [[1, 2, 11, 12], [50, 50, 60, 62]]
    assert boxes["b/b.jpg"].shape == (0, 4)  # below MIN_SCORE
    assert boxes["c/c.jpg"].shape == (0, 4)
    assert len(read_face_boxes(csv, min_score=0.7)["b/b.jpg"]) == 1


def test_centre_face_is_the_one_at_the_middle_if_any():
    boxes = np.array([[0, 0, 20, 20], [60, 55, 90, 95], [120, 0, 150, 30]], np.float32)
    assert centre_face(boxes, 150, 150) == 1
    assert centre_face(boxes[[0, 2]], 150, 150) is None
    assert centre_face(np.zeros((0, 4), np.float32), 150, 150) is None


def test_lfw_photos_label_the_centre_face_and_split_by_identity(tiny_data):
    photos = lfw_photos(
        tiny_data / "lfw", tiny_data / "fe", tiny_data / "lfw_boxes.csv", tiny_data / "splits"
    )
    by_name = {p.path.name: p for split in photos.values() for p in split}
    assert {p.path.name for p in photos["val"]} == {f"Joe_Biden_000{k}.jpg" for k in (1, 2, 3)}
    # a person the split files do not know trains
    assert "Two_People_0001.jpg" in {p.path.name for p in photos["train"]}
    assert photos["test"] == []
    smiling = by_name["Barack_Obama_0001.jpg"]
    assert smiling.label == CLASSES.index("happiness")
    assert len(smiling.boxes) == 1
    assert smiling.targets[0].tolist() == np.eye(7)[CLASSES.index("happiness")].tolist()
    assert by_name["Joe_Biden_0002.jpg"].label == CLASSES.index("surprise")
    # two faces, no legend label: both boxed, neither labelled
    both = by_name["Two_People_0001.jpg"]
    assert both.label == -1 and len(both.boxes) == 2 and np.isnan(both.targets).all()


def test_a_teacher_softens_the_lfw_target(tiny_data):
    teacher = {"Barack_Obama_0002.jpg": np.eye(7, dtype=np.float32)[CLASSES.index("sadness")]}
    photos = lfw_photos(
        tiny_data / "lfw",
        tiny_data / "fe",
        tiny_data / "lfw_boxes.csv",
        tiny_data / "splits",
        teacher=teacher,
        soft=0.25,
    )
    (neutral,) = [p for p in photos["train"] if p.path.name == "Barack_Obama_0002.jpg"]
    target = neutral.targets[0]
    assert target[CLASSES.index("neutral")] == pytest.approx(0.75)
    assert target[CLASSES.index("sadness")] == pytest.approx(0.25)


def test_ferplus_faces_are_photos_with_the_fixed_box_and_vote_target(tiny_data):
    faces = read_ferplus(tiny_data / "ferplus")[0]["train"]
    photos = ferplus_photos(faces)
    assert photos[0].boxes[0] == pytest.approx([v * 48 for v in FERPLUS_BOX])
    assert photos[0].targets[0].tolist() == faces[0].target.tolist()
    assert [p.label for p in photos] == [f.label for f in faces]
