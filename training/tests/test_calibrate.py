"""Logit adjustment: a face's answer under offsets, the fit, and the folding into the model."""

import numpy as np
import pytest
import torch
from PIL import Image

from fer_edge_training.calibrate import answer, face_cells, fit_offsets, with_offsets
from fer_edge_training.compare import score
from fer_edge_training.export import build
from fer_edge_training.photos import BoxedFace

FEAR, HAPPY, NEUTRAL = 2, 3, 4


def cells(obj: float, expression_logits: list[float]) -> np.ndarray:
    return np.array([[obj, *expression_logits]], dtype=np.float32)


def test_answer_takes_the_best_cell_and_applies_the_offsets():
    two = np.concatenate([cells(3.0, [0, 0, 0, 2.0, 1.5, 0, 0]), cells(-3.0, [5.0] + [0] * 6)])
    assert answer(two, np.zeros(7, np.float32)) == HAPPY
    shift = np.zeros(7, np.float32)
    shift[NEUTRAL] = 1.0
    assert answer(two, shift) == NEUTRAL
    assert answer(cells(-6.0, [0.0] * 7), np.zeros(7, np.float32)) is None
    assert answer(np.zeros((0, 8), np.float32), np.zeros(7, np.float32)) is None


def test_fit_recovers_a_classifier_biased_against_neutral():
    """Neutral faces whose neutral logit is 0.5 under happiness's: the fit must raise
    neutral (or lower happiness) until they are right, while happy faces stay right."""
    rng = np.random.default_rng(0)
    labels, face = [], []
    for i in range(200):
        z = rng.normal(-3.0, 0.2, 7).astype(np.float32)
        if i % 2:
            labels.append(HAPPY)
            z[HAPPY] = 2.0
        else:
            labels.append(NEUTRAL)
            z[NEUTRAL], z[HAPPY] = 1.0, 1.5
        face.append(cells(2.0, list(z)))
    zero = np.zeros(7, np.float32)
    assert sum(answer(c, zero) == t for c, t in zip(face, labels, strict=True)) == 100
    offsets = fit_offsets(labels, face)
    assert offsets[NEUTRAL] - offsets[HAPPY] > 0.5
    assert all(answer(c, offsets) == t for c, t in zip(face, labels, strict=True))


def test_an_expression_without_faces_is_not_fitted():
    """Fear has no face here (as in the real validation split) and wins 10 neutral
    faces: lowering fear would fix them for free, and stop the model from ever saying
    fear. It keeps offset 0; raising neutral instead would cost 100 happy faces."""
    labels, face = [], []
    for i in range(200):
        z = np.full(7, -3.0, np.float32)
        if i < 100:
            labels.append(HAPPY)
            z[HAPPY], z[NEUTRAL] = 1.5, 1.0
        else:
            labels.append(NEUTRAL)
            z[NEUTRAL] = 1.0
            if i < 110:
                z[FEAR] = 1.5
        face.append(cells(2.0, list(z)))
    offsets = fit_offsets(labels, face)
    assert offsets[FEAR] == 0.0
    assert [answer(c, offsets) for c in face[100:110]] == [FEAR] * 10


SAD = 5


def sadness_stealing_neutral(stolen: int = 100) -> tuple[list[int], list[np.ndarray]]:
    """20 sadness faces, all right before calibration: 14 by 0.1, 1 by 0.6, 5 by 0.9;
    100 neutral faces, of which sadness steals the first ``stolen`` by 0.01, 0.02, ...
    (the others are right by 0.5); 40 happy faces."""
    labels, face = [], []
    for margin in [0.1] * 14 + [0.6] + [0.9] * 5:
        z = np.full(7, -3.0, np.float32)
        z[NEUTRAL], z[SAD] = 1.0, 1.0 + margin
        labels.append(SAD)
        face.append(cells(2.0, list(z)))
    for i in range(100):
        z = np.full(7, -3.0, np.float32)
        z[NEUTRAL], z[SAD] = 1.0, (1.0 + 0.01 * (i + 1)) if i < stolen else 0.5
        labels.append(NEUTRAL)
        face.append(cells(2.0, list(z)))
    for _ in range(40):
        z = np.full(7, -3.0, np.float32)
        z[HAPPY] = 2.0
        labels.append(HAPPY)
        face.append(cells(2.0, list(z)))
    return labels, face


def test_no_fitted_expression_loses_its_recall_for_the_common_ones():
    """Each quarter point that sadness loses against neutral fixes 25 neutral faces, so
    accuracy alone would lose every sadness face. The fit must stop where sadness keeps
    MIN_RECALL (0.30: 6 faces, neutral +0.5; a floor of 0.25 would stop at 5 faces,
    neutral +0.75), and keep the happy faces."""
    labels, face = sadness_stealing_neutral()
    offsets = fit_offsets(labels, face)
    answers = [answer(c, offsets) for c in face]
    assert abs(offsets).max() <= 2.0
    assert answers[:20].count(SAD) == 6
    assert answers[20:120].count(NEUTRAL) == 50
    assert answers[120:] == [HAPPY] * 40


def test_a_kept_balanced_accuracy_refuses_trading_sadness_for_neutral():
    """60 neutral faces stolen: the free fit gains accuracy and loses balanced accuracy
    (neutral +0.5: sadness 1.0 -> 0.3, neutral 0.4 -> 0.9; 0.8 -> 0.73). Held at the
    uncalibrated balanced accuracy, no such trade is left: every sadness face stays
    right."""
    labels, face = sadness_stealing_neutral(stolen=60)
    zero = np.zeros(7, np.float32)
    before = score(labels, [answer(c, zero) for c in face])
    free = score(labels, [answer(c, fit_offsets(labels, face)) for c in face])
    assert free.accuracy > before.accuracy
    assert free.balanced_accuracy < before.balanced_accuracy
    offsets = fit_offsets(labels, face, min_balanced=before.balanced_accuracy)
    kept = score(labels, [answer(c, offsets) for c in face])
    assert kept.balanced_accuracy >= before.balanced_accuracy
    assert [answer(c, offsets) for c in face[:20]] == [SAD] * 20


def test_offsets_fold_into_the_models_expression_logits(tmp_path):
    """The calibrated state dict gives the same boxes and objectness, and expression
    logits shifted by exactly the offsets, at every level."""
    model = build("nano", seed=3, size=64)
    x = torch.randn(1, 3, 64, 64)
    offsets = np.array([0.5, -1, 0, 0.25, 1.5, -0.75, 2], dtype=np.float32)
    calibrated = build("nano", seed=3, size=64)
    calibrated.load_state_dict(with_offsets(model.state_dict(), offsets))
    with torch.no_grad():
        for a, b in zip(model(x), calibrated(x), strict=True):
            torch.testing.assert_close(b[:, :5], a[:, :5])
            shift = torch.from_numpy(offsets)[None, :, None, None]
            torch.testing.assert_close(b[:, 5:], a[:, 5:] + shift)
    with pytest.raises(ValueError, match="cls_preds"):
        with_offsets({"w": torch.zeros(1)}, offsets)


def test_face_cells_keeps_only_cells_overlapping_the_face(tmp_path):
    """A face box over the whole image overlaps some cells of an untrained model; a box
    in a corner, a tenth of the image wide, overlaps far fewer."""
    model = build("nano", seed=3, size=64)
    path = tmp_path / "face.png"
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(path)
    whole = BoxedFace(path, NEUTRAL, (0.0, 0.0, 80.0, 80.0))
    corner = BoxedFace(path, NEUTRAL, (0.0, 0.0, 8.0, 8.0))
    got_whole, got_corner = face_cells(model, [whole, corner], 64)
    assert got_whole.shape[1] == 8 and got_corner.shape[1] == 8
    assert len(got_corner) < len(got_whole)


def test_an_expression_the_model_never_predicts_does_not_block_the_fit():
    """Fear is never predicted (and has faces); neutral faces are called happy by a
    shade: the fit must still raise neutral, with fear left as it was."""
    labels, face = [], []
    for i in range(120):
        z = np.full(7, -3.0, np.float32)
        if i < 20:
            labels.append(FEAR)
            z[NEUTRAL] = 1.0
        elif i < 70:
            labels.append(HAPPY)
            z[HAPPY] = 2.0
        else:
            labels.append(NEUTRAL)
            z[NEUTRAL], z[HAPPY] = 1.0, 1.2
        face.append(cells(2.0, list(z)))
    offsets = fit_offsets(labels, face)
    answers = [answer(c, offsets) for c in face]
    assert answers[70:] == [NEUTRAL] * 50 and answers[20:70] == [HAPPY] * 50


def faces_beside_neutral(expression: int, logits: list[float]) -> list:
    """One found face per logit: neutral's logit 1.0, `expression`'s the given one,
    every other expression's -3."""
    face = []
    for logit in logits:
        z = np.full(7, -3.0, np.float32)
        z[NEUTRAL], z[expression] = 1.0, logit
        face.append(cells(2.0, list(z)))
    return face


def test_a_class_is_not_raised_where_its_answers_would_be_mostly_wrong():
    """20 anger faces lose to neutral by 0.5; 80 of 200 neutral faces have anger 0.4
    under neutral. Raising anger by 0.5 would win the 20 anger faces and lose the 80
    neutral ones: balanced accuracy rises (+0.30), but 4 in 5 "anger" answers would be
    wrong. The fit weighs F1, so it leaves every answer as it was."""
    anger = 0
    labels = [anger] * 20 + [NEUTRAL] * 200
    face = faces_beside_neutral(anger, [0.5] * 20 + [0.6] * 80 + [-3.0] * 120)
    offsets = fit_offsets(labels, face)
    answers = [answer(c, offsets) for c in face]
    assert answers[20:] == [NEUTRAL] * 200


def test_the_fit_keeps_faces_above_the_confidence_it_is_fitted_at():
    """Happy faces that score 0.16 and half the neutral faces called happy: lowering happiness
    by 0.25 puts every face right when a face counts as found from 0.05, but drops the
    happy faces to 0.134, under the runtime's 0.15; fitted there, the fit must raise
    neutral instead, so every face is still found and right at that threshold."""
    happy_logit = float(np.log(0.32 / 0.68))  # 0.5 x sigmoid = 0.16
    labels, face = [], []
    for i in range(200):
        z = [-3.0] * 7
        if i % 2:
            labels.append(HAPPY)
            z[HAPPY] = happy_logit
            face.append(cells(0.0, z))
        else:
            labels.append(NEUTRAL)
            z[NEUTRAL], z[HAPPY] = 1.0, 1.2 if i % 4 else -3.0
            face.append(cells(2.0, z))
    assert fit_offsets(labels, face, confidence=0.05)[HAPPY] < 0
    offsets = fit_offsets(labels, face, confidence=0.15)
    assert offsets[HAPPY] >= 0
    assert all(answer(c, offsets, 0.15) == t for c, t in zip(face, labels, strict=True))
    lowered = offsets.copy()
    lowered[HAPPY] = -0.25
    assert answer(face[1], lowered, 0.05) == HAPPY
    assert answer(face[1], lowered, 0.15) is None


def test_an_expression_below_its_floor_is_raised_to_it():
    """20 fear faces: 4 called fear (by 0.5), 2 losing to neutral by 0.1 and 0.2, 14 by
    2.5; 8 of 200 neutral faces called fear by 0.1 (fear recall 0.2, precision 1 in 3).
    Lowering fear by 0.25 puts the 8 neutral faces right and keeps fear's 4: the
    objective alone would take it, and fear would stay at 0.2. The fit must first raise
    fear to its floor (+0.25: 6 fear faces, MIN_RECALL, at a precision of 6 in 14) and
    keep it there."""
    labels = [FEAR] * 20 + [NEUTRAL] * 200
    face = faces_beside_neutral(
        FEAR, [1.5] * 4 + [0.9, 0.8] + [-1.5] * 14 + [1.1] * 8 + [-3.0] * 192
    )
    assert [answer(c, np.zeros(7, np.float32)) for c in face[:20]].count(FEAR) == 4
    offsets = fit_offsets(labels, face)
    assert offsets[FEAR] == 0.25
    assert [answer(c, offsets) for c in face[:20]].count(FEAR) == 6
