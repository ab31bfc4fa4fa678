"""The facial_expressions reader and identity-disjoint splits, on a fixture and on the
real data in ../shared when it is there."""

from collections import Counter
from pathlib import Path

import pytest

from fer_edge_training.data import (
    identity_of,
    read_facial_expressions,
    split_by_identity,
    write_splits,
)
from fer_edge_training.model import CLASSES

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "facial_expressions"


def make_repo(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "images").mkdir()
    lines = ["user.id,image,emotion"] + [f"1,{name},{emotion}" for name, emotion in rows]
    (tmp_path / "data" / "legend.csv").write_text("\n".join(lines) + "\n")
    for name, _ in rows:
        (tmp_path / "images" / name).write_bytes(b"")
    return tmp_path


def test_identity_strips_the_trailing_index():
    assert identity_of("George_W_Bush_0042.jpg") == "George_W_Bush"
    assert identity_of("HrithikRoshan12.jpg") == "HrithikRoshan"
    assert identity_of("Avinash_3.jpg") == "Avinash"
    assert identity_of("facial-expressions_2868588k.jpg") == "facial-expressions"
    assert identity_of("Madonna.jpg") == "Madonna"


def test_reader_maps_by_name_and_drops_what_has_no_class(tmp_path):
    root = make_repo(
        tmp_path,
        [
            ("A_B_0001.jpg", "HAPPINESS"),
            ("A_B_0002.jpg", "contempt"),
            ("C_D_0001.jpg", "fear"),
            ("C_D_0002.jpg", "anger"),
            ("C_D_0002.jpg", "sadness"),  # listed twice, conflicting
            ("E_F_0001.jpg", "Surprise"),
        ],
    )
    (root / "images" / "E_F_0001.jpg").unlink()
    crops, dropped = read_facial_expressions(root)
    assert [(c.path.name, CLASSES[c.label], c.identity) for c in crops] == [
        ("A_B_0001.jpg", "happiness", "A_B"),
        ("C_D_0001.jpg", "fear", "C_D"),
    ]
    assert dropped == {"contempt": 1, "conflicting labels": 1, "missing image": 1}


def test_splits_share_no_identity_and_are_reproducible(tmp_path):
    rows = [
        (f"P{p}_X_{i:04d}.jpg", CLASSES[(p + i) % 7])
        for p in range(40)
        for i in range(1, p % 5 + 2)
    ]
    crops, _ = read_facial_expressions(make_repo(tmp_path, rows))
    splits = split_by_identity(crops, seed=7)
    people = {name: {c.identity for c in s} for name, s in splits.items()}
    assert not (people["train"] & people["val"] or people["train"] & people["test"])
    assert not people["val"] & people["test"]
    assert sum(len(s) for s in splits.values()) == len(crops)
    assert 0.7 < len(splits["train"]) / len(crops) < 0.9
    assert split_by_identity(crops, seed=7) == splits
    assert split_by_identity(crops, seed=8) != splits
    write_splits(splits, tmp_path, tmp_path / "splits")
    lines = (tmp_path / "splits" / "test.txt").read_text().splitlines()
    assert len(lines) == len(splits["test"]) and lines[0].startswith("images/")


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"SKIPPED LOUDLY: no data at {SHARED}")
def test_real_dataset_counts_match_its_provenance():
    crops, dropped = read_facial_expressions(SHARED)
    counts = Counter(CLASSES[c.label] for c in crops)
    assert dropped["contempt"] == 9
    assert counts["fear"] == 21 and counts["surprise"] >= 360 and counts["neutral"] > 6800
    assert len(crops) > 13600
    splits = split_by_identity(crops, seed=0)
    assert {c.identity for c in splits["train"]}.isdisjoint(c.identity for c in splits["test"])
