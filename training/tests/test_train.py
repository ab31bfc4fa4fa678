"""The training command end to end on conftest's tiny copies of LFW and FER+: it trains,
evaluates, writes checkpoints atomically, resumes where it stopped, and starts from the
weights of another checkpoint."""

import json

import pytest
import torch
from PIL import Image

from fer_edge_training import train


def run(data, out, iters, *extra):
    args = ["--data", str(data / "fe"), "--lfw", str(data / "lfw"), "--ferplus"]
    args += [str(data / "ferplus"), "--lfw-boxes", str(data / "lfw_boxes.csv")]
    args += ["--splits", str(data / "splits")]
    args += ["--out", str(out), "--size", "64", "--batch", "2", "--iters", str(iters)]
    args += ["--eval-every", "2", "--val-frames", "2", "--checkpoint-every", "1"]
    args += ["--warmup", "1", "--scan", "fast", *extra]
    return train.main(args)


def test_trains_evaluates_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert run(tiny_data, out, 2, "--sizes", "64", "96") == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2]
    assert 0.0 <= lines[0]["map50"] <= 1.0 and len(lines[0]["ap"]) == 7
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    first = {k: v.clone() for k, v in state["model"].items()}
    assert (out / "best.pt").exists() and not list(out.glob("*.partial"))

    assert run(tiny_data, out, 4, "--resume") == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert any(not torch.equal(first[k], v) for k, v in state["model"].items())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 4]

    # --init starts a new run from a checkpoint's EMA weights (here with their objectness
    # anchored, which at lr 0 must change nothing either)
    fine = tmp_path / "fine"
    init = ("--init", str(out / "best.pt"), "--anchor-objectness", "1")
    assert run(tiny_data, fine, 1, *init, "--lr", "0") == 0
    best = torch.load(out / "best.pt", weights_only=True)["ema"]
    tuned = torch.load(fine / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], tuned[k]) for k in best if k.endswith(".weight"))


def test_close_up_batch_takes_part_in_every_step(tiny_data, tmp_path):
    plain, with_close_ups = tmp_path / "plain", tmp_path / "close"
    assert run(tiny_data, plain, 1) == 0
    extra = ("--close-up-batch", "2", "--close-up-sizes", "48", "64")
    assert run(tiny_data, with_close_ups, 1, *extra) == 0
    a = torch.load(plain / "last.pt", weights_only=True)["model"]
    b = torch.load(with_close_ups / "last.pt", weights_only=True)["model"]
    # same seed, same frames: only the close-ups' gradient can make the steps differ
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith(".weight"))

    # --close-up-weight scales their share of the step (1 is the default)
    for weight in ("1", "0.5"):
        out = tmp_path / f"weight-{weight}"
        assert run(tiny_data, out, 1, *extra, "--close-up-weight", weight) == 0
    one = torch.load(tmp_path / "weight-1" / "last.pt", weights_only=True)["model"]
    half = torch.load(tmp_path / "weight-0.5" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(b[k], one[k]) for k in b)
    assert any(not torch.equal(b[k], half[k]) for k in b if k.endswith(".weight"))

    # 2 x 2 grids of faces in a quarter as many frames (at least one): another step
    grids = tmp_path / "grids"
    assert run(tiny_data, grids, 1, *extra, "--close-up-grids", "2") == 0
    quad = torch.load(grids / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(b[k], quad[k]) for k in b if k.endswith(".weight"))


@pytest.mark.parametrize("option", ["--roll", "--background-tiles"])
def test_a_frame_option_changes_the_step_and_nothing_when_off(tiny_data, tmp_path, option):
    extra = ()
    if option == "--background-tiles":
        folder = tmp_path / "backgrounds"
        folder.mkdir()
        Image.new("RGB", (320, 240), (20, 90, 30)).save(folder / "leaves.jpg")
        extra = ("--backgrounds", str(folder))
    steps = {}
    for name, share in [("plain", None), ("none", "0"), ("all", "1")]:
        args = ("--batch", "4", "--close-ups", "0")  # mosaics and photos: rolls and cells
        args += () if share is None else (*extra, option, share)
        assert run(tiny_data, tmp_path / name, 1, *args) == 0
        steps[name] = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
    plain = steps["plain"]
    # a share of 0 draws nothing: the very frames, the very step
    assert all(torch.equal(plain[k], steps["none"][k]) for k in plain)
    assert any(not torch.equal(plain[k], steps["all"][k]) for k in plain if k.endswith(".weight"))


def test_frozen_modules_keep_their_weights_and_norm_statistics(tiny_data, tmp_path):
    start, out = tmp_path / "start", tmp_path / "frozen"
    assert run(tiny_data, start, 1) == 0
    init = torch.load(start / "best.pt", weights_only=True)["ema"]
    frozen = ("head.reg_convs", "head.obj_preds")
    assert run(tiny_data, out, 2, "--init", str(start / "best.pt"), "--freeze", *frozen) == 0
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    kept = [k for k in init if k.startswith(frozen)]
    assert any(k.endswith("running_mean") for k in kept)
    assert all(torch.equal(init[k], after[k]) for k in kept)
    trained = [k for k in init if k.startswith("head.cls_convs") and k.endswith(".weight")]
    assert any(not torch.equal(init[k], after[k]) for k in trained)

    with pytest.raises(SystemExit, match="head.nothing"):
        run(tiny_data, tmp_path / "typo", 1, "--freeze", "head.nothing")


def test_objectness_anchor_measures_how_far_objectness_moved():
    torch.manual_seed(0)
    levels = [torch.randn(2, 12, 8, 8), torch.randn(2, 12, 4, 4)]
    assert abs(float(train.objectness_anchor(levels, levels, 64))) < 1e-4

    moved = [level.clone().requires_grad_(True) for level in levels]
    with torch.no_grad():
        moved[0][:, 4] += 2.0  # every cell of the finer level surer of a face
    far = train.objectness_anchor(moved, levels, 64)
    assert float(far) > 1.0
    far.backward()
    # only objectness is held, and its gradient pulls the moved logits back down
    assert torch.all(moved[0].grad[:, 4] > 0) and torch.all(moved[1].grad[:, 4].abs() < 1e-6)
    assert float(moved[0].grad[:, [0, 1, 2, 3, 5, 6]].abs().max()) == 0.0


def test_anchor_objectness_needs_a_model_to_anchor_to(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="--init"):
        run(tiny_data, tmp_path / "run", 1, "--anchor-objectness", "1")


def test_anchor_model_anchors_to_another_models_objectness(tiny_data, tmp_path):
    """At lr 0 the anchor term is all that differs: about zero when the anchor is the
    --init model itself, positive when --anchor-model names weights whose objectness
    differs."""
    first = tmp_path / "first"
    assert run(tiny_data, first, 2) == 0
    other = tmp_path / "other.pt"
    weights = torch.load(first / "last.pt", weights_only=True)["ema"]
    for key in [k for k in weights if k.startswith("head.obj_preds.") and k.endswith("bias")]:
        weights[key] = weights[key] + 3.0  # an anchor that finds faces everywhere
    torch.save({"ema": weights}, other)
    init = ("--init", str(first / "last.pt"), "--anchor-objectness", "1", "--lr", "0")
    losses = {}
    for name, extra in [("self", ()), ("other", ("--anchor-model", str(other)))]:
        assert run(tiny_data, tmp_path / name, 2, *init, *extra) == 0
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = json.loads(lines[-1])["loss"]
    assert losses["other"] > losses["self"] + 0.1
