"""Parsing `fer-edge eval` output (the format of src/evaluate.rs) for the model card."""

from fer_edge_training.card import draw_confusion, parse_eval

EVAL_OUTPUT = """model models/m.onnx, dataset d/labels.txt (2 images)
expression  faces     AP50
anger           1   1.0000
disgust         1   0.0000
fear            0        -
happiness       0        -
neutral         0        -
sadness         0        -
surprise        0        -
images 2, faces 2, matched 2 (recall 1.0000), expression accuracy 0.5000
confusion (rows: labelled, columns: detected, order as above)
    1    0    0    0    0    0    0
    1    0    0    0    0    0    0
    0    0    0    0    0    0    0
    0    0    0    0    0    0    0
    0    0    0    0    0    0    0
    0    0    0    0    0    0    0
    0    0    0    0    0    0    0
mAP50 0.5000
"""


def test_parse_eval_output(tmp_path):
    figures = parse_eval(EVAL_OUTPUT)
    assert figures["map50"] == 0.5 and figures["accuracy"] == 0.5 and figures["recall"] == 1.0
    assert figures["ap"]["anger"] == 1.0 and figures["ap"]["fear"] is None
    assert figures["faces"]["disgust"] == 1
    assert figures["confusion"][1][0] == 1
    draw_confusion(figures["confusion"], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
