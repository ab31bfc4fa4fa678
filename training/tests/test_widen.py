import pytest
import torch

from fer_edge_training.export import randomise_norms
from fer_edge_training.model import build_model
from fer_edge_training.widen import main, widen_state


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    narrow = build_model("nano")
    randomise_norms(narrow, seed)  # non-trivial batch-norm statistics and norm affines
    return narrow.eval(), build_model("s").eval()


def _outputs(model, x):
    with torch.no_grad():
        return torch.cat([level.flatten(1) for level in model(x)], 1)


def test_widened_s_computes_what_nano_computes():
    narrow, wide = _pair()
    wide.load_state_dict(widen_state(narrow, wide, noise=0.0))
    x = torch.randn(2, 3, 64, 64)
    want, got = _outputs(narrow, x), _outputs(wide, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # every map of the wide model is a duplicated copy of the narrow one's, scan included
    stages_n, stages_w = narrow.forward_stages(x), wide.forward_stages(x)
    for name in ("dark3", "n3", "n5"):
        torch.testing.assert_close(stages_w[name][:, ::2], stages_n[name], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stages_w[name][:, 1::2], stages_w[name][:, ::2])


def test_noise_breaks_the_copies_apart_but_keeps_their_sum_and_the_function():
    narrow, wide = _pair(1)
    exact = widen_state(narrow, wide, noise=0.0)
    noisy = widen_state(narrow, wide, noise=0.2, seed=5)
    for key in ("backbone.dark3.1.conv1.conv.weight", "neck.vss_p3.ss2d.out_proj.weight"):
        w, w0 = noisy[key], exact[key]
        assert (w[0::2] - w[1::2]).norm() > 0.1 * w0.norm()  # the copies differ
        # by opposite amounts: the next layer, which adds the two copies, sees no change
        torch.testing.assert_close(w[0::2] + w[1::2], w0[0::2] + w0[1::2])
    x_proj, x_proj0 = (
        noisy["neck.vss_p3.ss2d.x_proj_weight"],
        exact["neck.vss_p3.ss2d.x_proj_weight"],
    )
    rows = 2 * narrow.neck.vss_p3.ss2d.dt_rank
    assert not torch.equal(x_proj[:, :rows], x_proj0[:, :rows])
    torch.testing.assert_close(x_proj[:, rows:], x_proj0[:, rows:])  # state rows: no copies
    preds = "head.cls_preds.0.weight"  # 7 expressions: no copies, no noise
    torch.testing.assert_close(noisy[preds], exact[preds])
    wide.load_state_dict(noisy)
    x = torch.randn(1, 3, 64, 64)
    want, got = _outputs(narrow, x), _outputs(wide, x)
    relative = (got - want).norm() / want.norm()
    assert 0 < relative < 0.1, relative


def test_cli_writes_a_checkpoint_train_can_start_from(tmp_path):
    narrow, wide = _pair(2)
    torch.save({"ema": {k: v.half() for k, v in narrow.state_dict().items()}}, tmp_path / "n.pt")
    assert main(["--checkpoint", str(tmp_path / "n.pt"), "--out", str(tmp_path / "s.pt")]) == 0
    state = torch.load(tmp_path / "s.pt", weights_only=True)["ema"]
    wide.load_state_dict(state)  # strict: every key, every shape
    assert not (tmp_path / "s.partial").exists()


def test_variants_of_other_widths_are_refused():
    narrow, _ = _pair()
    with pytest.raises(ValueError, match="cannot widen"):
        widen_state(narrow, narrow.__class__(width=0.375), noise=0.0)
