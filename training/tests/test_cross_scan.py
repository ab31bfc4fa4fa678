import numpy as np
import pytest
import torch

from fer_edge_training.model import cross_merge, cross_scan, cross_scan_indices


def direct_definitions(h: int, w: int) -> list[list[int]]:
    """MODEL.md's 8 directions, pixel by pixel: seq_k[l] = flat index of the pixel read."""
    length = h * w
    k0 = [0] * length
    k1 = [0] * length
    k4 = [0] * length
    k5 = [0] * length
    for hh in range(h):
        for ww in range(w):
            k0[hh * w + ww] = hh * w + ww  # row-major
            k1[ww * h + hh] = hh * w + ww  # column-major
            k4[ww * h + hh] = hh * w + (hh + ww) % w  # x[h, (h+w) mod W] at l = w*H + h
            k5[ww * h + hh] = hh * w + (ww - hh) % w  # x[h, (w-h) mod W] at l = w*H + h
    return [k0, k1, k0[::-1], k1[::-1], k4, k5, k4[::-1], k5[::-1]]


@pytest.mark.parametrize("h,w", [(5, 7), (8, 6), (4, 4), (1, 3), (3, 1)])
def test_indices_match_model_md(h, w):
    scan, merge = cross_scan_indices(h, w)
    assert scan.dtype == torch.int64 and scan.shape == (8, h * w)
    assert scan.tolist() == direct_definitions(h, w)
    for k in range(8):
        assert sorted(scan[k].tolist()) == list(range(h * w)), f"k{k} is not a permutation"
        assert torch.equal(merge[k][scan[k]], torch.arange(h * w))
        assert torch.equal(scan[k][merge[k]], torch.arange(h * w))


def test_diagonals_differ_from_plain_orders():
    scan, _ = cross_scan_indices(5, 7)
    assert len({tuple(r) for r in scan.tolist()}) == 8


def test_cross_scan_reads_pixels_in_direction_order():
    h, w = 5, 7
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).repeat(2, 3, 1, 1)
    scan, _ = cross_scan_indices(h, w)
    xs = cross_scan(x, scan)
    assert xs.shape == (2, 8, 3, h * w)
    for k in range(8):
        assert torch.equal(xs[1, k, 2], scan[k].float())


@pytest.mark.parametrize("h,w", [(5, 7), (8, 6)])
def test_merge_of_scan_is_eight_times_x(h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 4, h, w)
    scan, merge = cross_scan_indices(h, w)
    y = cross_merge(cross_scan(x, scan), merge)
    assert y.shape == (2, 4, h * w)
    assert torch.allclose(y, 8 * x.reshape(2, 4, h * w), atol=1e-6)


def test_merge_puts_each_position_back_on_its_pixel():
    h, w = 3, 4
    scan, merge = cross_scan_indices(h, w)
    y = torch.zeros(1, 8, 1, h * w)
    y[0, 5, 0, 7] = 1.0  # direction k5, sequence position 7
    out = cross_merge(y, merge)[0, 0]
    expected = torch.zeros(h * w)
    expected[scan[5, 7]] = 1.0
    assert torch.equal(out, expected)
    assert np.count_nonzero(out.numpy()) == 1


@pytest.mark.parametrize("h,w", [(5, 7), (4, 4)])
def test_gradients_of_scan_and_merge_are_their_adjoints(h, w, monkeypatch):
    """Training's cross-scan and cross-merge return gradients through the inverse
    permutations: checked against finite differences, and against autograd through the
    one-gather form that export writes."""
    torch.manual_seed(0)
    scan, merge = cross_scan_indices(h, w)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 8, 3, h * w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: cross_scan(x, scan), (x,))
    assert torch.autograd.gradcheck(lambda y: cross_merge(y, merge), (y,))

    weights = torch.randn(2, 8, 3, h * w, dtype=torch.float64)
    merged_weights = torch.randn(2, 3, h * w, dtype=torch.float64)

    def grads():
        (gx,) = torch.autograd.grad((cross_scan(x, scan) * weights).sum(), x)
        (gy,) = torch.autograd.grad((cross_merge(y, merge) * merged_weights).sum(), y)
        return gx, gy

    trained = grads()
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    exported = grads()
    for got, expected in zip(trained, exported, strict=True):
        assert torch.allclose(got, expected)
