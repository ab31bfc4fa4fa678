"""FER+ labels: the majority and probability schemes of FER+'s own code, and the loader on
a small copy of its layout (conftest ``tiny_data``)."""

import numpy as np
import pytest

from fer_edge_training.ferplus import majority, read_ferplus, soft_target, votes_to_classes
from fer_edge_training.model import CLASSES

# columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF


def votes(*counts):
    return np.array(counts, np.float32)


def test_majority_drops_single_votes_first():
    assert majority(votes(0, 6, 1, 1, 1, 1, 0, 0, 0, 0)) == "happiness"
    # 5 of 10 is no majority, but with the four single votes dropped it is 5 of 5
    assert majority(votes(5, 1, 1, 1, 1, 1, 0, 0, 0, 0)) == "neutral"
    assert majority(votes(4, 4, 2, 0, 0, 0, 0, 0, 0, 0)) is None
    assert majority(votes(0, 0, 0, 0, 0, 0, 0, 0, 9, 1)) == "unknown"


def test_soft_target_is_the_distribution_of_the_votes_that_are_not_outliers():
    target = soft_target(votes(6, 3, 1, 0, 0, 0, 0, 0, 0, 0))
    assert target.sum() == pytest.approx(1.0)
    assert target[CLASSES.index("neutral")] == pytest.approx(6 / 9)
    assert target[CLASSES.index("happiness")] == pytest.approx(3 / 9)
    assert target[CLASSES.index("surprise")] == 0.0  # one vote: an outlier
    # contempt, unknown and not-a-face votes are no expression of ours
    assert soft_target(votes(0, 0, 0, 0, 0, 0, 0, 7, 2, 1)) is None


def test_votes_are_mapped_to_our_class_order():
    mapped = votes_to_classes(votes(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    want = {"neutral": 1, "happiness": 2, "surprise": 3, "sadness": 4, "anger": 5}
    want |= {"disgust": 6, "fear": 7}
    assert mapped.tolist() == [want[c] for c in CLASSES]


def test_reads_the_splits_and_says_what_it_dropped(tiny_data):
    splits, dropped = read_ferplus(tiny_data / "ferplus")
    names = {split: [f.path.stem for f in faces] for split, faces in splits.items()}
    assert names == {
        "train": ["fer0000000", "fer0000001"],
        "val": ["fer0000004"],
        "test": ["fer0000006"],
    }
    assert dropped == {
        "no image name": 1,
        "mostly unknown": 1,
        "contempt": 1,
        "test: duplicate of an earlier split": 1,
    }
    # .png and .jpg files are both read
    assert {f.path.suffix for f in splits["train"]} == {".png", ".jpg"}
    happy, sad_or_neutral = splits["train"]
    assert happy.label == CLASSES.index("happiness")
    assert sad_or_neutral.label == CLASSES.index("neutral")
    # 4 sadness, 3 neutral, 3 anger: no majority, but a soft target
    (mixed,) = splits["test"]
    assert mixed.label == -1
    assert mixed.target[CLASSES.index("sadness")] == pytest.approx(0.4)


def test_a_label_row_of_the_wrong_shape_is_named(tiny_data, tmp_path):
    bad = tmp_path / "fp"
    bad.mkdir()
    (bad / "fer2013new.csv").write_text("header\nTraining,fer0.png,1,2\n")
    with pytest.raises(ValueError, match=r"fer2013new.csv:2: not a FER\+ label row"):
        read_ferplus(bad)
