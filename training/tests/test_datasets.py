"""The dataset readers, each on a small fixture written in its format."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_edge_training.datasets import (
    DatasetError,
    class_index,
    read_dataset,
    read_lines,
    write_lines,
)
from fer_edge_training.model import CLASSES


def image(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 150)).save(path)
    return path


def test_class_names_and_synonyms():
    assert class_index("Happy") == CLASSES.index("happiness")
    assert class_index("angry") == CLASSES.index("anger")
    assert class_index(" SURPRISE ") == CLASSES.index("surprise")
    with pytest.raises(KeyError):
        class_index("contempt")


def test_rafdb_basic(tmp_path):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 4\ntrain_00002.jpg 2\ntest_0001.jpg 7\n"
    )
    boxes = tmp_path / "Annotation" / "boundingbox"
    boxes.mkdir(parents=True)
    for stem, box in (
        ("train_00001", "1.5 2 30 40"),
        ("train_00002", "3 4 20 21"),
        ("test_0001", "0 0 10 10"),
    ):
        image(tmp_path / "Image" / "original" / f"{stem}.jpg")
        (boxes / f"{stem}_boundingbox.txt").write_text(box + "\n")
    train = read_dataset(tmp_path, "rafdb", split="train")
    assert [i.path.name for i in train] == ["train_00001.jpg", "train_00002.jpg"]
    assert [int(i.labels[0]) for i in train] == [CLASSES.index("happiness"), CLASSES.index("fear")]
    np.testing.assert_allclose(train[0].boxes, [[1.5, 2, 30, 40]])
    assert len(read_dataset(tmp_path, "rafdb")) == 3
    (boxes / "test_0001_boundingbox.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match="test_0001_boundingbox.txt: expected 4 numbers"):
        read_dataset(tmp_path, "rafdb")
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DatasetError, match="list_patition_label.txt:1"):
        read_dataset(tmp_path, "rafdb")


def test_sfew_uses_the_detector_and_skips_frames_without_a_face(tmp_path):
    image(tmp_path / "Happy" / "a.png")
    image(tmp_path / "Happy" / "b.png")
    image(tmp_path / "Angry" / "c.png")
    found = {"a.png": (1, 2, 30, 40), "c.png": (5, 5, 20, 25)}
    out = read_dataset(tmp_path, "sfew", detect=lambda p: found.get(p.name))
    assert [(i.path.name, int(i.labels[0])) for i in out] == [
        ("c.png", CLASSES.index("anger")),
        ("a.png", CLASSES.index("happiness")),
    ]
    image(tmp_path / "Bored" / "d.png")
    with pytest.raises(DatasetError, match="Bored: not an expression"):
        read_dataset(tmp_path, "sfew", detect=lambda p: None)


def test_yolo_txt(tmp_path):
    image(tmp_path / "images" / "f1.jpg", 100, 50)
    image(tmp_path / "images" / "f2.jpg", 100, 50)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f1.txt").write_text("3 0.5 0.5 0.2 0.4\n6 0.1 0.2 0.1 0.2\n")
    out = read_dataset(tmp_path, "yolo")
    assert [i.path.name for i in out] == ["f1.jpg", "f2.jpg"]
    np.testing.assert_allclose(out[0].boxes, [[40, 15, 60, 35], [5, 5, 15, 15]], atol=1e-4)
    assert out[0].labels.tolist() == [3, 6]
    assert out[1].boxes.shape == (0, 4)  # no label file: an image with no face
    (tmp_path / "labels" / "f2.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="f2.txt:1"):
        read_dataset(tmp_path, "yolo")


def test_paper_lines_round_trip(tmp_path):
    image(tmp_path / "img" / "a.jpg")
    image(tmp_path / "img" / "b.jpg")
    file = tmp_path / "test.txt"
    file.write_text("img/a.jpg 1,2,30,40,3 10,10,20,20,0\n# comment\nimg/b.jpg\n")
    out = read_lines(file)
    assert [i.path for i in out] == [tmp_path / "img" / "a.jpg", tmp_path / "img" / "b.jpg"]
    assert out[0].labels.tolist() == [3, 0]
    assert out[1].boxes.shape == (0, 4)
    copy = tmp_path / "copy.txt"
    write_lines(out, copy)
    again = read_lines(copy)
    assert [i.path for i in again] == [i.path for i in out]
    np.testing.assert_allclose(again[0].boxes, out[0].boxes)
    file.write_text("img/a.jpg 1,2,30,40\n")
    with pytest.raises(DatasetError, match="test.txt:1: bad box '1,2,30,40'"):
        read_lines(file)


def test_facial_expressions_layout_with_boxes(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "legend.csv").write_text(
        "user.id,image,emotion\n1,A_B_0001.jpg,HAPPINESS\n1,C_D_0001.jpg,sadness\n1,E_F_0001.jpg,neutral\n"
    )
    for name in ("A_B_0001.jpg", "C_D_0001.jpg", "E_F_0001.jpg"):
        image(tmp_path / "images" / name, 80, 80)
    csv = tmp_path / "boxes.csv"
    # boxes made on 160x160 copies: they scale to these 80x80 images
    csv.write_text(
        "image,x1,y1,x2,y2,score,faces,width,height\n"
        "A_B_0001.jpg,20,40,100,140,0.99,1,160,160\n"
        "C_D_0001.jpg,,,,,,0,160,160\n"
        "E_F_0001.jpg,0,0,160,160,0.9,1,160,160\n"
    )
    out = read_dataset(tmp_path, "facial_expressions", boxes_csv=csv)
    assert [i.path.name for i in out] == ["A_B_0001.jpg", "E_F_0001.jpg"]
    np.testing.assert_allclose(out[0].boxes, [[10, 20, 50, 70]])
    assert out[0].labels.tolist() == [CLASSES.index("happiness")]


def test_unknown_format():
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'"):
        read_dataset(Path("."), "coco")
