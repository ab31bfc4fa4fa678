"""The native (C++) selective scan against the reference recurrence.

Tolerances: float32 native results are compared with float64 autograd through
``selective_scan_ref``; the error is measured relative to the largest magnitude of the
reference tensor, ``max|native - ref| / max|ref|``, and must be below 2e-6 for y and 1e-5
for every gradient (measured: ~1e-7 to 4e-7). float64 is checked with gradcheck.
Every SIMD path the CPU has (SSE2 / AVX2+FMA / AVX-512F) is run.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from fer_edge_training import native_scan
from fer_edge_training.scan import (
    SelectiveScan,
    selective_scan_fast,
    selective_scan_ref,
    set_scan_impl,
)

Y_TOL = 2e-6
GRAD_TOL = 1e-5
NAMES = ("u", "delta", "A", "Bs", "Cs", "D", "delta_bias")


@pytest.fixture(scope="module")
def ext():
    if not native_scan.available():
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail("a C++ compiler is installed but the native scan did not build")
        pytest.skip("no C++ compiler: the native scan cannot be built here")
    return native_scan.load()


@pytest.fixture(params=[0, 1, 2], ids=["sse2", "avx2", "avx512"])
def isa(request, ext):
    if request.param > ext.cpu_isa():
        pytest.skip("this CPU does not have that ISA")
    assert ext.set_max_isa(request.param) == request.param
    yield request.param
    ext.set_max_isa(2)


def make_inputs(b, kd, n, length, g, dtype=torch.float32, seed=0, dt_scale=1.0, a_scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    u = randn(b, kd, length)
    delta = randn(b, kd, length) * 0.5 * dt_scale
    a = -(torch.rand(kd, n, generator=gen, dtype=dtype) * 2.0 + 0.05) * a_scale
    bs, cs = randn(b, g, n, length), randn(b, g, n, length)
    d, bias = randn(kd), randn(kd) * 0.3 * dt_scale
    return [u, delta, a, bs, cs, d, bias]


def rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check_against_ref(args, delta_softplus, y_tol=Y_TOL, grad_tol=GRAD_TOL):
    leaves = [None if a is None else a.clone().requires_grad_() for a in args]
    y = native_scan.selective_scan_native(*leaves, delta_softplus)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    live = [a for a in leaves if a is not None]
    grads = torch.autograd.grad(y, live, gy)

    ref_leaves = [None if a is None else a.detach().double().requires_grad_() for a in args]
    y_ref = selective_scan_ref(*ref_leaves, delta_softplus)
    ref_live = [a for a in ref_leaves if a is not None]
    ref_grads = torch.autograd.grad(y_ref, ref_live, gy.double())

    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < y_tol
    names = [n for n, a in zip(NAMES, args, strict=True) if a is not None]
    for name, g, gr in zip(names, grads, ref_grads, strict=True):
        assert g.shape == gr.shape, name
        assert rel_err(g, gr) < grad_tol, name


# (B, KD, N, L, G): L = 1, KD not a multiple of 8 (Dg = 3, 5, 13), N other than 16,
# G > 1, one group, and a one-(batch, group) case where the group's channel blocks are
# split across tasks (partial dBs / dCs buffers summed at the end)
SHAPES = [
    (2, 16, 16, 23, 2),
    (2, 9, 16, 1, 3),
    (1, 10, 5, 17, 2),
    (3, 13, 3, 9, 1),
    (1, 200, 16, 31, 1),
    (2, 24, 1, 12, 8),
    (1, 40, 33, 7, 4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-KD{}-N{}-L{}-G{}".format(*s))
@pytest.mark.parametrize("delta_softplus", [True, False], ids=["softplus", "linear"])
def test_native_scan_matches_ref(isa, shape, delta_softplus):
    # delta_softplus=False: keep delta + delta_bias positive (a real step size)
    args = make_inputs(*shape, seed=sum(shape))
    if not delta_softplus:
        args[1] = args[1].abs() + 0.01
        args[6] = args[6].abs()
    check_against_ref(args, delta_softplus)


def test_native_scan_large_dt_times_a(isa):
    # |dt * A| up to ~200: decays underflow to 0 (exp clamps at -87.3), softplus saturates
    # (dt = delta + bias above 20), and tiny dt (1e-4) exercise softplus' = -expm1(-dt)
    args = make_inputs(2, 12, 16, 40, 2, seed=3, dt_scale=30.0, a_scale=4.0)
    args[1][:, :, ::5] = -9.2  # dt ~ 1e-4 every fifth step
    check_against_ref(args, True)
    args[1], args[6] = args[1].abs(), args[6].abs()  # linear: dt = delta + bias >= 0
    check_against_ref(args, False)


def test_native_scan_without_d_and_bias(isa):
    args = make_inputs(2, 12, 16, 19, 3, seed=4)
    args[5] = args[6] = None
    check_against_ref(args, True)


def test_native_scan_non_contiguous_inputs(ext):
    b, kd, n, length, g = 2, 8, 16, 11, 2
    args = make_inputs(b, kd, n, length, g, seed=5)
    args[0] = args[0].transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    args[3] = args[3].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not args[0].is_contiguous() and not args[3].is_contiguous()
    check_against_ref(args, True)


def test_native_scan_two_threads(ext):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check_against_ref(make_inputs(1, 64, 16, 30, 2, seed=6), True)
        check_against_ref(make_inputs(4, 32, 16, 30, 4, seed=7), True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("delta_softplus", [True, False], ids=["softplus", "linear"])
def test_native_scan_gradcheck_float64(ext, delta_softplus):
    args = make_inputs(2, 6, 3, 5, 2, dtype=torch.float64, seed=8)
    args = [a.requires_grad_() for a in args]
    fn = native_scan.selective_scan_native
    assert torch.autograd.gradcheck(lambda *a: fn(*a, delta_softplus), args)
    # and the same values as the reference in float64
    y = fn(*args, delta_softplus)
    assert torch.allclose(y, selective_scan_ref(*args, delta_softplus), rtol=1e-12, atol=1e-12)


def test_native_scan_module_impl(ext):
    scan = SelectiveScan(delta_softplus=True, impl="native")
    args = make_inputs(2, 16, 16, 9, 2, seed=9)
    torch.testing.assert_close(scan(*args), selective_scan_ref(*args), rtol=1e-5, atol=1e-5)
    model = torch.nn.Sequential(SelectiveScan(impl="fast"), SelectiveScan(impl="ref"))
    assert all(m.impl == "native" for m in set_scan_impl(model, "native"))


def test_native_scan_fallback_warns_once(monkeypatch, tmp_path):
    """No usable compiler: one RuntimeWarning, then selective_scan_fast results."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))  # a real, failing build
    monkeypatch.setattr(native_scan, "BUILD_DIR", tmp_path / "build")
    saved = native_scan._ext, native_scan._tried
    native_scan._reset_for_tests()
    try:
        args = make_inputs(2, 8, 16, 6, 2, seed=10)
        with pytest.warns(RuntimeWarning, match="using selective_scan_fast") as record:
            y = native_scan.selective_scan_native(*args)
        assert "no-such-c++" in str(record[0].message)  # says why
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y2 = native_scan.selective_scan_native(*args)
        expected = selective_scan_fast(*args)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        torch.testing.assert_close(y2, expected, rtol=0, atol=0)
        assert not native_scan.available()
    finally:
        native_scan._reset_for_tests(*saved)


def test_native_scan_disabled_by_env(monkeypatch):
    monkeypatch.setenv(native_scan.ENV_DISABLE, "0")
    saved = native_scan._ext, native_scan._tried
    native_scan._reset_for_tests()
    try:
        args = make_inputs(1, 4, 16, 5, 2, seed=13)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = native_scan.selective_scan_native(*args)
        torch.testing.assert_close(y, selective_scan_fast(*args), rtol=0, atol=0)
    finally:
        native_scan._reset_for_tests(*saved)


def test_native_scan_unsupported_inputs_fall_back(ext):
    # float16 is not taken by the kernels: silently the fast implementation
    args = make_inputs(1, 4, 16, 5, 1, seed=11)
    big_n = make_inputs(1, 4, native_scan.MAX_N + 1, 5, 1, seed=12)
    torch.testing.assert_close(
        native_scan.selective_scan_native(*big_n), selective_scan_fast(*big_n), rtol=0, atol=0
    )
    assert native_scan._supported(*args)
    assert not native_scan._supported(*[a.half() for a in args])
