"""fer_edge::SelectiveScan2D (docs/model-contract.md, ONNX contract version 2): the PyTorch
and numpy kernels against the contract's own table of directions, and SS2D's fused path
(projections in grid order, one SelectiveScan2D) against its training path (cross-scan,
per-direction projections, 1-D scan, cross-merge)."""

import numpy as np
import pytest
import torch

from fer_edge_training.model import SS2D, restore_fused_scan, set_fused_scan
from fer_edge_training.onnx_graph import selective_scan_2d_numpy
from fer_edge_training.scan import selective_scan_ref, set_scan_impl
from fer_edge_training.scan2d import selective_scan_2d


def visits(k: int, h: int, w: int) -> list[int]:
    """The contract's table, pixel by pixel: the flat index (h*W + w) step l visits."""
    length = h * w
    out = [0] * length
    for l_ in range(length):
        if k in (0, 2):
            p = l_
        else:
            hh, ww = l_ % h, l_ // h  # l = w*H + h
            if k in (1, 3):
                p = hh * w + ww
            elif k in (4, 6):
                p = hh * w + (hh + ww) % w
            else:
                p = hh * w + (ww - hh) % w
        out[l_] = p
    return out[::-1] if k in (2, 3, 6, 7) else out


def random_inputs(b, k, di, n, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = r(b, di, h, w)
    delta = r(b, k, di, h, w) * 0.5
    a = -torch.exp(r(k * di, n) * 0.5)
    bs, cs = r(b, k, n, h, w), r(b, k, n, h, w)
    d, db = r(k * di), r(k * di) * 0.5 - 1.0
    return u, delta, a, bs, cs, d, db


def by_definition(u, delta, a, bs, cs, d, db, delta_softplus=True):
    """The contract's "Meaning" paragraph, direction by direction with its own table."""
    b, di, h, w = u.shape
    k, n = delta.shape[1], a.shape[1]
    length = h * w
    y = torch.zeros(b, di, length, dtype=u.dtype)
    for kk in range(k):
        p = torch.tensor(visits(kk, h, w))
        ch = slice(kk * di, (kk + 1) * di)
        y_k = selective_scan_ref(
            u.reshape(b, di, length)[:, :, p],
            delta[:, kk].reshape(b, di, length)[:, :, p],
            a[ch],
            bs[:, kk].reshape(b, 1, n, length)[..., p],
            cs[:, kk].reshape(b, 1, n, length)[..., p],
            d[ch],
            db[ch],
            delta_softplus,
        )
        for step in range(length):
            y[:, :, p[step]] += y_k[:, :, step]
    return y.reshape(b, di, h, w)


def test_table_helper_matches_the_contract_examples():
    # k1 at l = w*H + h visits (h, w); k4 visits (h, (h+w) mod W); k2 is k0 reversed
    h, w = 3, 4
    assert visits(1, h, w)[1 * h + 2] == 2 * w + 1
    assert visits(4, h, w)[3 * h + 2] == 2 * w + (2 + 3) % w
    assert visits(5, h, w)[0 * h + 2] == 2 * w + (0 - 2) % w
    assert visits(2, h, w) == list(range(h * w))[::-1]
    for k in range(8):
        assert sorted(visits(k, h, w)) == list(range(h * w))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("hw", [(5, 7), (4, 3)])
def test_torch_op_follows_the_contract_definition(k, hw):
    h, w = hw
    args = random_inputs(2, k, 3, 4, h, w, seed=k)
    want = by_definition(*args)
    for impl in ("ref", "fast"):
        got = selective_scan_2d(*args, delta_softplus=True, impl=impl)
        assert got.shape == (2, 3, h, w)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_directions_are_not_interchangeable():
    """A wrong order of directions would be caught: swapping delta's k1 and k4 (and their
    A rows) changes the output."""
    args = list(random_inputs(1, 8, 2, 3, 5, 7, seed=5))
    y = selective_scan_2d(*args)
    delta = args[1].clone()
    delta[:, [1, 4]] = delta[:, [4, 1]]
    args[1] = delta
    assert (selective_scan_2d(*args) - y).abs().max() > 1e-3


@pytest.mark.parametrize("k", [2, 8])
@pytest.mark.parametrize("sp", [0, 1])
def test_numpy_kernel_matches_torch_op(k, sp):
    args = list(random_inputs(2, k, 3, 4, 5, 7, seed=10 + k, dtype=torch.float32))
    if not sp:  # dt = delta + delta_bias itself: keep it >= 0, as softplus would
        args[1], args[6] = args[1].abs(), args[6].abs()
    want = selective_scan_2d(*args, delta_softplus=bool(sp)).numpy()
    got = selective_scan_2d_numpy(*[t.numpy() for t in args], delta_softplus=sp)
    assert got.dtype == np.float32 and got.shape == (2, 3, 5, 7)
    assert np.isfinite(want).all() and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 9])
def test_k_outside_1_to_8_is_refused(k):
    args = random_inputs(1, max(k, 1), 2, 3, 3, 3)
    u, _, a, bs, cs, d, db = args
    delta = torch.zeros(1, k, 2, 3, 3, dtype=u.dtype)
    with pytest.raises(ValueError):
        selective_scan_2d(u, delta, a, bs, cs, d, db)


def test_inconsistent_shapes_are_refused():
    u, delta, a, bs, cs, d, db = random_inputs(1, 4, 2, 3, 3, 5)
    with pytest.raises(ValueError):
        selective_scan_2d(u, delta, a[:-1], bs, cs, d, db)
    with pytest.raises(ValueError):
        selective_scan_2d(u, delta, a, bs[:, :2], cs[:, :2], d, db)
    with pytest.raises(ValueError):
        selective_scan_2d(u, delta[..., :4], a, bs, cs, d, db)


# ---- SS2D: fused (export) path against the training path ---------------------------


def random_ss2d(d_model=16, seed=0):
    torch.manual_seed(seed)
    m = SS2D(d_model).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # away from the init, so that every parameter matters
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("hw", [(5, 7), (8, 6), (1, 4)])
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_ss2d_fused_path_equals_training_path(hw, impl):
    m = set_scan_impl(random_ss2d(seed=hw[0]), impl)
    x = torch.randn(2, *hw, 16, generator=torch.Generator().manual_seed(7))
    assert m.fused_scan is False  # training keeps the sequence path
    with torch.no_grad():
        unfused = m(x)
        previous = set_fused_scan(m, True)
        fused = m(x)
        restore_fused_scan(previous)
    assert m.fused_scan is False
    assert fused.shape == unfused.shape == (2, *hw, 16)
    err = float((fused - unfused).abs().max())
    assert err <= 1e-5 * max(1.0, float(unfused.abs().max())), err
    assert float(unfused.abs().max()) > 1e-2


def test_ss2d_fused_path_has_gradients_equal_to_training_path():
    m = random_ss2d(seed=3)
    x = torch.randn(1, 5, 7, 16, generator=torch.Generator().manual_seed(8))
    grads = []
    for fused in (False, True):
        m.zero_grad()
        set_fused_scan(m, fused)
        m(x).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    set_fused_scan(m, False)
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, rtol=1e-4, atol=1e-5, msg=key)


def test_the_flag_is_not_a_weight():
    m = random_ss2d()
    keys = list(m.state_dict())
    set_fused_scan(m, True)
    assert list(m.state_dict()) == keys
    fresh = SS2D(16)
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert fresh.fused_scan is False
