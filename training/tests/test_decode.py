import json

import numpy as np
import pytest

from fer_edge_training.decode import decode, decode_candidates, iou, nms

from .conftest import GOLDEN

S = 64
LOGIT_OFF = -20.0


def empty_levels():
    return [np.full((1, 12, S // s, S // s), LOGIT_OFF, np.float32) for s in (8, 16, 32)]


def put(levels, lvl, gy, gx, dx, dy, w, h, obj, cls, cls_logit=10.0):
    stride = S / levels[lvl].shape[2]
    raw = levels[lvl][0, :, gy, gx]
    raw[0], raw[1] = dx, dy
    raw[2], raw[3] = np.log(w / stride), np.log(h / stride)
    raw[4] = obj
    raw[5:] = LOGIT_OFF
    raw[5 + cls] = cls_logit


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_decode_boxes_scores_and_nms():
    lv = empty_levels()
    # A: level 0 (stride 8), cell (gy=2, gx=3), centre (3.5, 2.5)*8 = (28, 20), 16x12, class 3
    put(lv, 0, 2, 3, 0.5, 0.5, 16, 12, obj=3.0, cls=3)
    # B: overlaps A a lot (next cell, same size), lower score, same class -> suppressed
    put(lv, 0, 2, 4, 0.0, 0.5, 16, 12, obj=1.0, cls=3)
    # C: same place as B but another class -> kept
    put(lv, 1, 1, 2, 0.0, 0.25, 16, 12, obj=2.0, cls=5)
    # D: level 2 (stride 32), centre (48, 16), 20x30, class 0, low score -> below conf
    put(lv, 2, 0, 1, 0.5, 0.5, 20, 30, obj=-3.0, cls=0)
    dets = decode(lv, S, r=1.0, orig_hw=(S, S), conf=0.1, iou_thr=0.45)
    assert [d["label"] for d in dets] == [3, 5]
    a, c = dets
    np.testing.assert_allclose(a["box"], [20, 14, 36, 26], atol=1e-4)
    np.testing.assert_allclose(a["score"], sig(3.0) * sig(10.0), rtol=1e-5)
    assert len(a["scores"]) == 7 and int(np.argmax(a["scores"])) == 3
    np.testing.assert_allclose(a["scores"][0], sig(3.0) * sig(LOGIT_OFF), rtol=1e-4)
    # C: level 1 stride 16: centre (2*16, (1+0.25)*16) = (32, 20)
    np.testing.assert_allclose(c["box"], [24, 14, 40, 26], atol=1e-4)
    assert a["score"] > c["score"]
    # without NMS pressure (iou 1.0) B comes back, between A and C
    all3 = decode(lv, S, 1.0, (S, S), conf=0.1, iou_thr=1.0)
    assert [d["label"] for d in all3] == [3, 5, 3]
    # lower conf brings D
    assert [d["label"] for d in decode(lv, S, 1.0, (S, S), 0.01, 0.45)] == [3, 5, 0]


def test_undo_letterbox_and_clip():
    lv = empty_levels()
    put(lv, 0, 0, 0, 0.5, 0.5, 16, 16, obj=4.0, cls=1)  # box [-4, -4, 12, 12]
    put(lv, 0, 7, 7, 0.5, 0.5, 8, 8, obj=4.0, cls=2)  # box [56, 56, 64, 64]
    dets = decode(lv, S, r=0.5, orig_hw=(100, 120), conf=0.5)
    boxes = {d["label"]: d["box"] for d in dets}
    np.testing.assert_allclose(boxes[1], [0, 0, 24, 24])  # /0.5 then clipped at 0
    np.testing.assert_allclose(boxes[2], [112, 100, 120, 100])  # clipped to w=120, h=100


def test_strides_come_from_shapes():
    # a non-standard layout: one level of 4x4 on a 64 input (stride 16)
    raw = np.full((1, 12, 4, 4), LOGIT_OFF, np.float32)
    raw[0, :, 1, 2] = [0.5, 0.5, 0.0, 0.0, 5.0, 9, *([LOGIT_OFF] * 6)]
    boxes, scores = decode_candidates([raw], 64)
    i = 1 * 4 + 2
    np.testing.assert_allclose(boxes[i], [32, 16, 48, 32])
    assert scores.shape == (16, 7)


def test_nms_tie_break_by_index_and_iou():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    labels = np.array([0, 0, 0])
    assert nms(boxes, scores, labels, 0.45) == [0, 2]
    assert iou(boxes[0], boxes[1:]).tolist() == [1.0, 0.0]
    # IoU exactly at the threshold is kept (suppress only when > iou)
    b2 = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU 0.5
    assert nms(b2, np.array([0.9, 0.8], np.float32), np.array([1, 1]), 0.5) == [0, 1]


@pytest.mark.skipif(not GOLDEN.exists(), reason="tests/data/golden not generated")
def test_golden_detections_follow_from_golden_levels():
    g = json.loads((GOLDEN / "detections.json").read_text())
    levels = [np.load(GOLDEN / f"level{i}.npy") for i in range(3)]
    assert [lv.shape[2] for lv in levels] == [g["size"] // s for s in (8, 16, 32)]
    dets = decode(levels, g["size"], g["r"], tuple(g["image_hw"]), g["conf"], g["iou"])
    assert 2 <= len(dets) <= 30
    assert len(dets) == len(g["detections"])
    for d, e in zip(dets, g["detections"], strict=True):
        assert d["label"] == e["label"]
        np.testing.assert_allclose(d["box"], e["box"], rtol=1e-6)
        np.testing.assert_allclose(d["scores"], e["scores"], rtol=1e-6)
