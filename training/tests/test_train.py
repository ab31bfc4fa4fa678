"""The training command end to end on a few real crops: it trains, evaluates, writes
checkpoints atomically and resumes where it stopped."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fer_edge_training import train

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "facial_expressions"
BOXES = Path(__file__).resolve().parents[1] / "data" / "facial_expressions_boxes.csv"


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"SKIPPED: {SHARED} is missing (the shared data sits beside the repo)")
    root = tmp_path_factory.mktemp("fe")
    (root / "data").mkdir()
    (root / "images").mkdir()
    lines = (SHARED / "data" / "legend.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    picked, seen = [], set()
    for row in rows:  # one image each of 30 people
        name = row.split(",")[1]
        person = name.rsplit("_", 1)[0]
        if person in seen or not (SHARED / "images" / name).exists():
            continue
        seen.add(person)
        picked.append(row)
        shutil.copy(SHARED / "images" / name, root / "images" / name)
        if len(picked) == 30:
            break
    (root / "data" / "legend.csv").write_text("\n".join([header, *picked]) + "\n")
    return root


def run(repo, out, iters, *extra):
    args = ["--data", str(repo), "--boxes", str(BOXES), "--out", str(out), "--size", "64"]
    args += ["--batch", "2", "--iters", str(iters), "--eval-every", "2", "--val-frames", "2"]
    args += ["--checkpoint-every", "1", "--warmup", "1", "--scan", "fast", *extra]
    return train.main(args)


def test_trains_evaluates_and_resumes(small_repo, tmp_path):
    out = tmp_path / "run"
    assert run(small_repo, out, 2) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2]
    assert 0.0 <= lines[0]["map50"] <= 1.0 and len(lines[0]["ap"]) == 7
    for split in ("train", "val", "test"):
        assert (out / "splits" / f"{split}.txt").stat().st_size > 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    first = {k: v.clone() for k, v in state["model"].items()}
    assert (out / "best.pt").exists() and not list(out.glob("*.partial"))

    assert run(small_repo, out, 4, "--resume") == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert any(not torch.equal(first[k], v) for k, v in state["model"].items())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 4]
