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


def test_noise_breaks_the_copies_apart_but_keeps_the_function_close():
    narrow, wide = _pair(1)
    wide.load_state_dict(widen_state(narrow, wide, noise=1e-2, seed=5))
    conv = wide.state_dict()["backbone.dark3.1.conv1.conv.weight"]
    assert not torch.equal(conv[0::2], conv[1::2])
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
