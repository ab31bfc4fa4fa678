import pytest
import torch

from fer_edge_training.scan import (
    SelectiveScan,
    selective_scan_fast,
    selective_scan_ref,
    set_scan_impl,
)


def make(b, kd, n, length, g, dtype=torch.float64, seed=0, grad=True, sp=True):
    """Scan inputs; with sp=False delta and delta_bias are positive (dt = their sum > 0)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale + shift

    args = [
        r(b, kd, length),  # u
        r(b, kd, length, scale=0.7, shift=-1.0),  # delta
        -torch.exp(r(kd, n, scale=0.5)),  # A < 0
        r(b, g, n, length),  # Bs
        r(b, g, n, length),  # Cs
        r(kd),  # D
        r(kd, scale=0.5),  # delta_bias
    ]
    if not sp:
        args[1] = args[1].abs() * 0.3 + 0.01
        args[6] = args[6].abs() * 0.1
    return [a.requires_grad_(grad) for a in args]


def naive(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=True):
    """Triple loop over (b, c, t) and n, plain Python floats."""
    import math

    b_, kd, length = u.shape
    g, n = Bs.shape[1], A.shape[1]
    y = torch.zeros(b_, kd, length, dtype=torch.float64)
    for b in range(b_):
        for c in range(kd):
            gi = c // (kd // g)
            h = [0.0] * n
            for t in range(length):
                x = float(delta[b, c, t] + delta_bias[c])
                dt = (x if x > 20 else math.log1p(math.exp(x))) if delta_softplus else x
                acc = 0.0
                for i in range(n):
                    h[i] = math.exp(dt * float(A[c, i])) * h[i] + dt * float(
                        Bs[b, gi, i, t]
                    ) * float(u[b, c, t])
                    acc += float(Cs[b, gi, i, t]) * h[i]
                y[b, c, t] = acc + float(D[c]) * float(u[b, c, t])
    return y


@pytest.mark.parametrize("sp", [True, False])
@pytest.mark.parametrize("dims", [(2, 6, 5, 7, 3), (1, 4, 3, 1, 2), (2, 3, 2, 9, 1)])
def test_ref_and_fast_match_naive_loop(sp, dims):
    args = make(*dims, grad=False, sp=sp)
    y = naive(*args, delta_softplus=sp)
    assert torch.allclose(selective_scan_ref(*args, delta_softplus=sp), y, atol=1e-12)
    for chunk in (1, 2, 4, 32):
        got = selective_scan_fast(*args, delta_softplus=sp, chunk=chunk)
        assert torch.allclose(got, y, atol=1e-12), chunk


@pytest.mark.parametrize("sp", [True, False])
@pytest.mark.parametrize(
    "dims,chunk",
    [((2, 6, 5, 7, 3), 3), ((1, 6, 5, 1, 3), 32), ((2, 10, 3, 6, 5), 1), ((1, 4, 2, 5, 2), 2)],
)
def test_fast_gradcheck(sp, dims, chunk):
    args = make(*dims, sp=sp)

    def f(*a):
        return selective_scan_fast(*a, delta_softplus=sp, chunk=chunk)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_custom_op_gradcheck():
    args = make(2, 6, 5, 7, 3)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fer_edge.selective_scan(*a, True), args)


def grads(fn, args, gy):
    for a in args:
        a.grad = None
    fn(*args).backward(gy)
    return [a.grad.clone() for a in args]


@pytest.mark.parametrize("sp", [True, False])
def test_fast_matches_autograd_through_ref_float32(sp):
    # realistic-ish: K=8 groups, Di=20 (KD=160, not a multiple of 8*8), N=16, L=150
    args = make(2, 160, 16, 150, 8, dtype=torch.float32, seed=1, sp=sp)
    gy = torch.randn(2, 160, 150, generator=torch.Generator().manual_seed(2))
    y_ref = selective_scan_ref(*args, delta_softplus=sp)
    y_fast = selective_scan_fast(*args, delta_softplus=sp)
    scale = y_ref.abs().max()
    assert ((y_fast - y_ref).abs().max() / scale) < 1e-5
    g_ref = grads(lambda *a: selective_scan_ref(*a, delta_softplus=sp), args, gy)
    g_fast = grads(lambda *a: selective_scan_fast(*a, delta_softplus=sp), args, gy)
    g_op = grads(lambda *a: torch.ops.fer_edge.selective_scan(*a, sp), args, gy)
    names = ["u", "delta", "A", "Bs", "Cs", "D", "delta_bias"]
    for name, r, f, o in zip(names, g_ref, g_fast, g_op, strict=True):
        s = r.abs().max()
        assert (f - r).abs().max() / s < 1e-4, name
        assert (o - r).abs().max() / s < 1e-4, name


def test_long_sequence_stays_finite():
    # large dt * |A| would overflow if anything exponentiated a positive number
    args = make(1, 8, 4, 400, 2, dtype=torch.float32, grad=False)
    args[1] = args[1] + 30.0
    y_fast = selective_scan_fast(*args)
    y_ref = selective_scan_ref(*args)
    assert torch.isfinite(y_fast).all()
    assert torch.allclose(y_fast, y_ref, rtol=1e-5, atol=1e-4)


def test_shape_errors():
    args = make(1, 6, 4, 5, 4, grad=False)  # KD=6 not a multiple of G=4
    with pytest.raises(ValueError):
        selective_scan_ref(*args)
    with pytest.raises(ValueError):
        selective_scan_fast(*args)


def test_module_impl_switch():
    args = make(1, 6, 4, 5, 3, dtype=torch.float32, grad=False)
    m = SelectiveScan()
    assert m.impl == "fast"
    fast = m(*args)
    set_scan_impl(m, "ref")
    assert m.impl == "ref"
    assert torch.allclose(m(*args), fast, atol=1e-6)
    with pytest.raises(ValueError):
        set_scan_impl(m, "cuda")
