"""SimOTA assignment, the YOLOX loss, and the mAP / accuracy figures."""

import math

import numpy as np
import pytest
import torch

from fer_edge_training.evaluate import average_precision, evaluate
from fer_edge_training.loss import flatten_levels, simota_assign, yolox_loss


def levels_for(size, boxes, labels, classes=7, logit=6.0):
    """Raw maps that predict exactly ``boxes`` at the cells holding their centres."""
    levels = []
    for stride in (8, 16, 32):
        n = size // stride
        raw = torch.zeros(1, 5 + classes, n, n)
        raw[0, 4] = -logit
        raw[0, 5:] = -logit
        levels.append(raw)
    for (x1, y1, x2, y2), c in zip(boxes, labels, strict=False):
        w, h = x2 - x1, y2 - y1
        stride = 8 if max(w, h) < 48 else 16 if max(w, h) < 96 else 32
        level = levels[{8: 0, 16: 1, 32: 2}[stride]]
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        gx, gy = int(cx), int(cy)
        level[0, :4, gy, gx] = torch.tensor(
            [cx - gx, cy - gy, math.log(w / stride), math.log(h / stride)]
        )
        level[0, 4, gy, gx] = logit
        level[0, 5 + c, gy, gx] = logit
    return levels


def test_flatten_levels_strides_from_shapes():
    levels = [torch.zeros(2, 12, 8, 8), torch.zeros(2, 12, 4, 4), torch.zeros(2, 12, 2, 2)]
    raw, grids, strides = flatten_levels(levels, 64)
    assert raw.shape == (2, 84, 12)
    assert strides.tolist() == [8.0] * 64 + [16.0] * 16 + [32.0] * 4
    assert grids[9].tolist() == [1.0, 1.0]


def test_simota_assigns_cells_near_each_face():
    size = 128
    gt = torch.tensor([[10.0, 10.0, 40.0, 44.0], [70.0, 60.0, 120.0, 120.0]])
    labels = torch.tensor([3, 5])
    raw, grids, strides = flatten_levels(levels_for(size, gt.tolist(), labels.tolist()), size)
    from fer_edge_training.loss import decode_boxes

    boxes = decode_boxes(raw[0], grids, strides)
    fg, matched = simota_assign(gt, labels, boxes, raw[0, :, 4], raw[0, :, 5:], grids, strides)
    assert fg.sum() >= 2 and set(matched.tolist()) == {0, 1}
    centres = (grids[fg] + 0.5) * strides[fg, None]
    for c, g in zip(centres, matched, strict=False):
        x1, y1, x2, y2 = gt[g]
        assert x1 - 2.5 * 32 <= c[0] <= x2 + 2.5 * 32 and y1 - 2.5 * 32 <= c[1] <= y2 + 2.5 * 32


def test_loss_is_lower_for_the_right_answer_and_has_gradients():
    size = 128
    gt = [(10.0, 10.0, 40.0, 44.0), (70.0, 60.0, 120.0, 120.0)]
    labels = [3, 5]
    targets = [(torch.tensor(gt), torch.tensor(labels))]
    good = levels_for(size, gt, labels)
    wrong_class = levels_for(size, gt, [0, 1])
    shifted = levels_for(size, [(b[0] + 12, b[1] + 12, b[2] + 12, b[3] + 12) for b in gt], labels)
    l_good, parts = yolox_loss(good, targets, size)
    l_wrong, parts_wrong = yolox_loss(wrong_class, targets, size)
    l_shifted, parts_shifted = yolox_loss(shifted, targets, size)
    assert l_good < l_wrong and parts["cls"] < parts_wrong["cls"]
    assert l_good < l_shifted and parts["box"] < parts_shifted["box"]
    torch.manual_seed(0)
    random = [torch.randn(2, 12, n, n, requires_grad=True) for n in (16, 8, 4)]
    loss, _ = yolox_loss(
        random, targets + [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))], size
    )
    loss.backward()
    assert all(r.grad is not None and torch.isfinite(r.grad).all() for r in random)


def test_average_precision_all_point():
    # 3 detections: TP, FP, TP over 2 faces -> precision envelope 1 up to recall .5, 2/3 to 1
    assert average_precision(
        np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    ) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_evaluate_perfect_and_imperfect():
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), np.array([0, 1]))]
    perfect = [(gt[0][0], np.array([0.9, 0.8]), np.array([0, 1]))]
    report = evaluate(perfect, gt, 3)
    assert report.ap == [1.0, 1.0, None] and report.map50 == 1.0
    assert report.accuracy == 1.0 and report.recall == 1.0
    # face 1 labelled as class 0 with a lower score; one extra false positive
    dets = [
        (
            np.array([[0, 0, 10, 10], [21, 21, 40, 40], [50, 50, 60, 60]], float),
            np.array([0.9, 0.6, 0.95]),
            np.array([0, 0, 0]),
        )
    ]
    report = evaluate(dets, gt, 3)
    # class 0: FP (0.95), TP (0.9), FP (0.6) -> AP = 1 face, found at precision 1/2
    assert report.ap[0] == pytest.approx(0.5)
    assert report.ap[1] == 0.0
    assert report.matched == 2 and report.correct == 1
    assert report.confusion[1, 0] == 1 and report.confusion[0, 0] == 1


def test_soft_targets_equal_to_one_hot_give_the_index_loss_and_pull_towards_the_teacher():
    size = 128
    gt = [(10.0, 10.0, 40.0, 44.0), (70.0, 60.0, 120.0, 120.0)]
    labels = [3, 5]
    levels = levels_for(size, gt, labels)
    hard = [(torch.tensor(gt), torch.tensor(labels))]
    one_hot = [(torch.tensor(gt), torch.eye(7)[labels])]
    l_hard, _ = yolox_loss(levels, hard, size)
    l_one_hot, _ = yolox_loss(levels, one_hot, size)
    assert torch.allclose(l_hard, l_one_hot)
    # half the target on a class the maps call impossible: the class loss must rise
    teacher = torch.eye(7)[[0, 1]]
    soft = [(torch.tensor(gt), 0.5 * torch.eye(7)[labels] + 0.5 * teacher)]
    _, parts_soft = yolox_loss(levels, soft, size)
    _, parts_hard = yolox_loss(levels, hard, size)
    assert parts_soft["cls"] > parts_hard["cls"] + 1.0


def test_an_unlabelled_face_trains_box_and_objectness_but_not_the_expression():
    size = 64
    boxes = [(8.0, 8.0, 40.0, 40.0)]
    levels = [lv.requires_grad_() for lv in levels_for(size, boxes, [2])]
    unlabelled = torch.full((1, 7), float("nan"))
    loss, parts = yolox_loss(levels, [(torch.tensor(boxes), unlabelled)], size)
    assert parts["cls"] == 0.0 and parts["fg"] > 0 and math.isfinite(float(loss))
    loss.backward()
    class_grads = sum(float(lv.grad[:, 5:].abs().sum()) for lv in levels)
    box_grads = sum(float(lv.grad[:, :5].abs().sum()) for lv in levels)
    assert class_grads == 0.0 and box_grads > 0.0
    # beside a labelled face, the unlabelled one adds no class loss
    two = torch.tensor([boxes[0], (44.0, 44.0, 60.0, 60.0)])
    levels = levels_for(size, [tuple(b) for b in two.tolist()], [2, 5])
    labelled = torch.eye(7)[[2, 5]]
    mixed = torch.stack([labelled[0], unlabelled[0]])
    _, parts_mixed = yolox_loss(levels, [(two, mixed)], size)
    _, parts_first = yolox_loss(levels, [(two[:1], labelled[:1])], size)
    assert parts_mixed["cls"] * parts_mixed["fg"] == pytest.approx(
        parts_first["cls"] * parts_first["fg"], rel=1e-5
    )
