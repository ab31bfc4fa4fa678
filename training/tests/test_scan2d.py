"""fer_edge::SelectiveScan2D (docs/model-contract.md, ONNX contract versions 2 and 3): the
PyTorch and numpy kernels against the contract's own table of directions and its dt
projection, and SS2D's fused paths (projections in grid order, one SelectiveScan2D) against
its training path (cross-scan, per-direction projections, 1-D scan, cross-merge)."""

import numpy as np
import pytest
import torch

from fer_edge_training.model import SS2D, restore_scan_op_version, set_scan_op_version
from fer_edge_training.onnx_graph import (
    selective_scan_2d_low_rank_numpy,
    selective_scan_2d_numpy,
)
from fer_edge_training.scan import selective_scan_ref, set_scan_impl
from fer_edge_training.scan2d import selective_scan_2d, selective_scan_2d_low_rank


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


# ---- version 3: the dt projection inside the op ------------------------------------


def random_low_rank_inputs(b, k, di, r, n, h, w, seed=0, dtype=torch.float64):
    """Version 3 inputs: ``(u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias)``."""
    u, _, a, bs, cs, d, db = random_inputs(b, k, di, n, h, w, seed, dtype)
    g = torch.Generator().manual_seed(seed + 100)
    dt_low = torch.randn(b, k, r, h, w, generator=g, dtype=dtype)
    dt_weight = torch.randn(k * di, r, generator=g, dtype=dtype) * r**-0.5
    return u, dt_low, dt_weight, a, bs, cs, d, db


def delta_by_definition(dt_low, dt_weight):
    """The contract's delta[b, k, c, h, w] = sum over r of dt_weight[k*Di + c, r] *
    dt_low[b, k, r, h, w], term by term."""
    b, k, r, h, w = dt_low.shape
    di = dt_weight.shape[0] // k
    delta = torch.zeros(b, k, di, h, w, dtype=dt_low.dtype)
    for kk in range(k):
        for c in range(di):
            for rr in range(r):
                delta[:, kk, c] += dt_weight[kk * di + c, rr] * dt_low[:, kk, rr]
    return delta


@pytest.mark.parametrize("k,r", [(1, 1), (2, 3), (8, 2)])
def test_low_rank_op_is_version_2_on_the_projected_delta(k, r):
    u, dt_low, dt_weight, *rest = random_low_rank_inputs(2, k, 3, r, 4, 4, 5, seed=k + r)
    want = by_definition(u, delta_by_definition(dt_low, dt_weight), *rest)
    for impl in ("ref", "fast"):
        got = selective_scan_2d_low_rank(u, dt_low, dt_weight, *rest, impl=impl)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sp", [0, 1])
def test_low_rank_numpy_kernel_matches_torch_op(sp):
    args = list(random_low_rank_inputs(2, 8, 3, 2, 4, 5, 7, seed=20, dtype=torch.float32))
    if not sp:  # keep dt = delta + delta_bias >= 0, as softplus would
        args[1], args[2], args[7] = args[1].abs(), args[2].abs(), args[7].abs()
    want = selective_scan_2d_low_rank(*args, delta_softplus=bool(sp)).numpy()
    got = selective_scan_2d_low_rank_numpy(*[t.numpy() for t in args], delta_softplus=sp)
    assert got.dtype == np.float32 and got.shape == (2, 3, 5, 7)
    assert np.isfinite(want).all() and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arg,shape,named",
    [
        ("dt_weight", (8 * 3 + 1, 2), "dt_weight"),  # not K*Di rows
        ("dt_weight", (8 * 3, 0), "dt_weight"),  # R = 0
        ("dt_weight", (8 * 3, 3), "dt_low"),  # R of dt_weight is not dt_low's
        ("dt_low", (1, 8, 2, 4), "dt_low"),  # 4-D
        ("dt_low", (1, 8, 2, 4, 6), "dt_low"),  # W differs from u's
        ("dt_low", (1, 7, 2, 4, 5), "A"),  # K = 7 while A, Bs, Cs have 8 directions
    ],
)
def test_low_rank_fake_shape_checks_name_the_input(arg, shape, named):
    """The op's fake kernel (what torch.export runs: meta tensors, no data) refuses
    inconsistent shapes, naming the input at fault; so does the eager function."""
    names = ["u", "dt_low", "dt_weight", "A", "Bs", "Cs", "D", "delta_bias"]
    args = list(random_low_rank_inputs(1, 8, 3, 2, 4, 4, 5, dtype=torch.float32))
    args[names.index(arg)] = torch.zeros(shape)
    meta = [t.to("meta") for t in args]
    assert torch.ops.fer_edge.selective_scan_2d_low_rank(
        *[t.to("meta") for t in random_low_rank_inputs(1, 8, 3, 2, 4, 4, 5)], True
    ).shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match=f"^{named} must be"):
        torch.ops.fer_edge.selective_scan_2d_low_rank(*meta, True)
    with pytest.raises(ValueError, match=f"^{named} must be"):
        selective_scan_2d_low_rank(*args)


# ---- SS2D: fused (export) paths against the training path --------------------------


def random_ss2d(d_model=16, seed=0):
    torch.manual_seed(seed)
    m = SS2D(d_model).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # away from the init, so that every parameter matters
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("hw", [(5, 7), (8, 6), (1, 4)])
@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_ss2d_fused_path_equals_training_path(hw, impl, version):
    d_model = 40 if version == 3 else 16  # dt_rank R = 3 (16: R = 1)
    m = set_scan_impl(random_ss2d(d_model, seed=hw[0]), impl)
    x = torch.randn(2, *hw, m.d_model, generator=torch.Generator().manual_seed(7))
    assert m.scan_op_version == 1  # training keeps the sequence path
    with torch.no_grad():
        unfused = m(x)
        previous = set_scan_op_version(m, version)
        fused = m(x)
        restore_scan_op_version(previous)
    assert m.scan_op_version == 1
    assert fused.shape == unfused.shape == (2, *hw, m.d_model)
    err = float((fused - unfused).abs().max())
    assert err <= 1e-5 * max(1.0, float(unfused.abs().max())), err
    assert float(unfused.abs().max()) > 1e-2


def test_ss2d_fused_paths_have_gradients_equal_to_training_path():
    m = random_ss2d(seed=3)
    x = torch.randn(1, 5, 7, 16, generator=torch.Generator().manual_seed(8))
    grads = []
    for version in (1, 2, 3):
        m.zero_grad()
        set_scan_op_version(m, version)
        m(x).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    set_scan_op_version(m, 1)
    for fused in grads[1:]:
        for key, g in grads[0].items():
            torch.testing.assert_close(fused[key], g, rtol=1e-4, atol=1e-5, msg=key)


def test_the_version_is_not_a_weight():
    m = random_ss2d()
    keys = list(m.state_dict())
    set_scan_op_version(m, 3)
    assert list(m.state_dict()) == keys
    fresh = SS2D(16)
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert fresh.scan_op_version == 1
    with pytest.raises(ValueError):
        set_scan_op_version(m, 4)
    assert m.scan_op_version == 3
