"""The 8 scan directions of SS2D and ``fer_edge::SelectiveScan2D`` (ONNX contract v2, v3).

``docs/model-contract.md`` defines version 2 of the ONNX contract: one op,
``SelectiveScan2D``, that takes the feature map once in its grid layout, walks the first
K of the 8 directions of :func:`cross_scan_indices` itself and returns the merged output.
Its definition, in PyTorch, is :func:`selective_scan_2d`: gather ``u``, ``delta``, ``Bs``
and ``Cs`` into the K direction sequences, run the 1-D selective scan of :mod:`.scan`
(G = K groups), put each output back on its pixel and sum over the directions.

Shapes (``L = H*W``):

* ``u``: ``[B, Di, H, W]``; ``delta``: ``[B, K, Di, H, W]``;
* ``A``: ``[K*Di, N]``; ``Bs``, ``Cs``: ``[B, K, N, H, W]``; ``D``, ``delta_bias``: ``[K*Di]``;
* output ``y``: ``[B, Di, H, W]``.

Version 3 moves SS2D's dt projection into the op: instead of ``delta`` it takes the
low-rank ``dt_low`` ``[B, K, R, H, W]`` and the projection ``dt_weight`` ``[K*Di, R]``
(row ``k*Di + c``: direction k, channel c), and at every pixel
``delta[b, k, c] = sum_r dt_weight[k*Di + c, r] * dt_low[b, k, r]`` (:func:`project_dt`);
the rest is version 2 (:func:`selective_scan_2d_low_rank`).

``torch.ops.fer_edge.selective_scan_2d`` (version 2) and
``torch.ops.fer_edge.selective_scan_2d_low_rank`` (version 3) are the custom ops the SS2D
export path calls while ``torch.export`` traces the model; :mod:`.export` turns each
into one ``fer_edge::SelectiveScan2D`` node.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .scan import scan_function

ONNX_OP_TYPE_2D = "SelectiveScan2D"
#: The contract version that introduced SelectiveScan2D (the domain version of a v2 model).
ONNX_OP_VERSION_2D = 2
#: The contract version whose SelectiveScan2D also does the dt projection: 8 inputs,
#: ``dt_low`` and ``dt_weight`` instead of ``delta``.
ONNX_OP_VERSION_2D_LOW_RANK = 3
#: Most directions a SelectiveScan2D node may walk.
MAX_DIRECTIONS = 8

# --------------------------------------------------------------------------------------
# Cross-scan / cross-merge (8 directions)
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _cross_scan_indices_np(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    # numpy, not torch: under torch.export these become constants, not traced ops.
    length = h * w
    # grids indexed [w_, h_] so that reshape(-1) enumerates l = w_*H + h_
    hT, wT = np.meshgrid(np.arange(h), np.arange(w), indexing="xy")  # both [w, h]
    k0 = np.arange(length)
    k1 = (hT * w + wT).reshape(-1)  # seq[w*H + h] = x[h, w]
    k4 = (hT * w + (hT + wT) % w).reshape(-1)  # seq[w*H + h] = x[h, (h+w) mod W]
    k5 = (hT * w + (wT - hT) % w).reshape(-1)  # seq[w*H + h] = x[h, (w-h) mod W]
    scan = np.stack([k0, k1, k0[::-1], k1[::-1], k4, k5, k4[::-1], k5[::-1]]).astype(np.int64)
    merge = np.empty_like(scan)  # inverse permutations: merge[k, scan[k, l]] = l
    rows = np.arange(scan.shape[0])[:, None]
    merge[rows, scan] = np.arange(length)[None, :]
    scan.flags.writeable = False
    merge.flags.writeable = False
    return scan, merge


def cross_scan_indices(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Constant index tensors of the 8 directions on an h x w grid (flat index h*W + w).

    Returns ``(scan, merge)``, both int64 ``[8, h*w]``: direction k reads pixel
    ``scan[k, l]`` at sequence position l; ``merge[k]`` is the inverse permutation
    (``merge[k, scan[k, l]] == l``), i.e. pixel p takes sequence position ``merge[k, p]``.

    Directions: k0 row-major; k1 column-major (l = w*H + h); k2, k3 reverses of k0, k1;
    k4 the diagonal x[h, (h+w) mod W] read at l = w*H + h; k5 the anti-diagonal
    x[h, (w-h) mod W] read the same way; k6, k7 reverses of k4, k5.
    """
    scan, merge = _cross_scan_indices_np(int(h), int(w))
    return torch.from_numpy(scan.copy()), torch.from_numpy(merge.copy())


@lru_cache(maxsize=32)
def _merge_offsets_np(h: int, w: int) -> np.ndarray:
    _, merge = _cross_scan_indices_np(h, w)
    return merge + np.arange(merge.shape[0])[:, None] * (h * w)


def cross_scan(x: Tensor, scan_idx: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, K, C, L]: x read in each direction's order.

    Exported (``torch.compiler.is_exporting()``), one constant-index Gather: the graph of
    contract version 1. Otherwise :class:`_Directions`, whose backward is a gather too."""
    b, c, h, w = x.shape
    k, length = scan_idx.shape
    if torch.compiler.is_exporting():
        xs = torch.index_select(x.reshape(b, c, h * w), 2, scan_idx.reshape(-1))  # [B, C, K*L]
        return xs.reshape(b, c, k, length).transpose(1, 2)
    return _Directions.apply(x.reshape(b, c, h * w), scan_idx, False)


def cross_merge(y: Tensor, merge_idx: Tensor, offsets: Tensor | None = None) -> Tensor:
    """[B, K, C, L] -> [B, C, L]: each direction back onto its source pixels, summed.

    Exported, one constant-index Gather over the flattened (k, l) axis: index
    ``merge[k] + k*L`` (pass those ``offsets`` precomputed to keep the graph free of index
    arithmetic), then a sum. Otherwise :class:`_Directions`."""
    b, k, c, length = y.shape
    if not torch.compiler.is_exporting():
        return _Directions.apply(y, merge_idx, True)
    if offsets is None:
        offsets = merge_idx + torch.arange(k, dtype=merge_idx.dtype).view(k, 1) * length
    ys = y.transpose(1, 2).reshape(b, c, k * length)
    ys = torch.index_select(ys, 2, offsets.reshape(-1)).reshape(b, c, k, length)
    return ys.sum(dim=2)


def _read_in_orders(x: Tensor, orders: Tensor) -> Tensor:
    """[B, C, L] -> [B, K, C, L]: ``out[:, k, :, l] = x[:, :, orders[k, l]]``.

    One ``gather`` over broadcast views: faster on the CPU than an ``index_select`` per
    direction (docs/training.md)."""
    b, c, length = x.shape
    shape = (b, orders.shape[0], c, length)
    return torch.gather(x.unsqueeze(1).expand(shape), 3, _broadcast(orders, shape))


def _sum_read_in_orders(y: Tensor, orders: Tensor) -> Tensor:
    """[B, K, C, L] -> [B, C, L]: ``sum_k y[:, k, :, orders[k, l]]``."""
    return torch.gather(y, 3, _broadcast(orders, y.shape)).sum(dim=1)


def _broadcast(orders: Tensor, shape) -> Tensor:
    """``[K, L]`` orders as a ``[B, K, C, L]`` view (no copy)."""
    k, length = orders.shape
    return orders.view(1, k, 1, length).expand(shape)


def _inverse(orders: Tensor) -> Tensor:
    """Each row's inverse permutation."""
    return torch.argsort(orders, dim=1)


class _Directions(torch.autograd.Function):
    """Training's cross-scan (``merging`` False) and cross-merge (True). Each direction is
    a permutation of the pixels, so the two are each other's adjoint: the gradient of one
    is the other through the inverse permutations, gathers and a sum, where autograd's
    backward of one big ``index_select`` scatters through ``index_add``
    (docs/training.md has the measured difference)."""

    @staticmethod
    def forward(ctx, t: Tensor, orders: Tensor, merging: bool) -> Tensor:
        ctx.save_for_backward(orders)
        ctx.merging = merging
        return (_sum_read_in_orders if merging else _read_in_orders)(t, orders)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (orders,) = ctx.saved_tensors
        adjoint = _read_in_orders if ctx.merging else _sum_read_in_orders
        return adjoint(grad, _inverse(orders)), None, None


# --------------------------------------------------------------------------------------
# SelectiveScan2D
# --------------------------------------------------------------------------------------


def check_shapes_2d(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor) -> tuple:
    """``(b, k, di, h, w, n)`` of valid SelectiveScan2D inputs; ValueError otherwise."""
    b, di, h, w = _check_u(u)
    if delta.dim() != 5 or delta.shape[0] != b or tuple(delta.shape[2:]) != (di, h, w):
        raise ValueError(f"delta must be [B, K, Di={di}, H, W], got {tuple(delta.shape)}")
    return _check_directions(u, delta.shape[1], A, Bs, Cs)


def check_shapes_2d_low_rank(
    u: Tensor, dt_low: Tensor, dt_weight: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor
) -> tuple:
    """``(b, k, di, h, w, n, r)`` of valid version 3 SelectiveScan2D inputs; ValueError
    otherwise. K is ``dt_low``'s dimension 1, R ``dt_weight``'s dimension 1."""
    b, di, h, w = _check_u(u)
    if dt_low.dim() != 5 or dt_low.shape[0] != b or tuple(dt_low.shape[3:]) != (h, w):
        raise ValueError(f"dt_low must be [B={b}, K, R, H={h}, W={w}], got {tuple(dt_low.shape)}")
    b, k, di, h, w, n = _check_directions(u, dt_low.shape[1], A, Bs, Cs)
    if dt_weight.dim() != 2 or dt_weight.shape[0] != k * di or dt_weight.shape[1] < 1:
        raise ValueError(f"dt_weight must be [K*Di={k * di}, R >= 1], got {tuple(dt_weight.shape)}")
    r = dt_weight.shape[1]
    if dt_low.shape[2] != r:
        raise ValueError(f"dt_low must be [B, K, R={r}, H, W], got {tuple(dt_low.shape)}")
    return b, k, di, h, w, n, r


def _check_u(u: Tensor) -> tuple:
    if u.dim() != 4:
        raise ValueError(f"u must be [B, Di, H, W], got {tuple(u.shape)}")
    return tuple(u.shape)


def _check_directions(u: Tensor, k: int, A: Tensor, Bs: Tensor, Cs: Tensor) -> tuple:
    """``(b, k, di, h, w, n)``: K in range, and ``A``, ``Bs``, ``Cs`` agreeing with it."""
    b, di, h, w = u.shape
    if not 1 <= k <= MAX_DIRECTIONS:
        raise ValueError(f"K must be 1..{MAX_DIRECTIONS}, got {k}")
    if A.dim() != 2 or A.shape[0] != k * di:
        raise ValueError(f"A must be [K*Di={k * di}, N], got {tuple(A.shape)}")
    n = A.shape[1]
    if Bs.dim() != 5 or tuple(Bs.shape) != (b, k, n, h, w):
        raise ValueError(f"Bs must be [B, K, N, H, W] = {(b, k, n, h, w)}, got {tuple(Bs.shape)}")
    if Cs.shape != Bs.shape:
        raise ValueError(f"Cs must have the shape of Bs, got {tuple(Cs.shape)}")
    return b, k, di, h, w, n


def _gather_directions(x: Tensor, offsets: Tensor) -> Tensor:
    """``[B, K, C, H, W]`` -> ``[B, K, C, L]``: direction k's own map, in its step order.

    ``offsets[k, l] = scan[k, l] + k*L``: one constant-index gather over the flattened
    (k, pixel) axis."""
    b, k, c, h, w = x.shape
    flat = x.reshape(b, k, c, h * w).transpose(1, 2).reshape(b, c, k * h * w)
    seq = torch.index_select(flat, 2, offsets.reshape(-1))
    return seq.reshape(b, c, k, h * w).transpose(1, 2)


@lru_cache(maxsize=32)
def _scan_offsets_np(h: int, w: int) -> np.ndarray:
    scan, _ = _cross_scan_indices_np(h, w)
    return scan + np.arange(scan.shape[0])[:, None] * (h * w)


def selective_scan_2d(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
    impl: str = "ref",
) -> Tensor:
    """``fer_edge::SelectiveScan2D`` (docs/model-contract.md) in PyTorch.

    Cross-scan of ``u`` (shared by the directions) and of each direction's own ``delta``,
    ``Bs``, ``Cs``, the 1-D selective scan of :mod:`.scan` (``impl``: "ref", "fast" or
    "native") with G = K groups, cross-merge. Differentiable (autograd through the gathers
    and the chosen scan)."""
    b, k, di, h, w, n = check_shapes_2d(u, delta, A, Bs, Cs)
    length = h * w
    scan_idx, merge_idx = cross_scan_indices(h, w)
    scan_idx, merge_idx = scan_idx[:k].to(u.device), merge_idx[:k].to(u.device)
    offsets = torch.from_numpy(_scan_offsets_np(h, w)[:k].copy()).to(u.device)
    us = cross_scan(u, scan_idx)  # [B, K, Di, L]
    ds = _gather_directions(delta, offsets)  # [B, K, Di, L]
    bs = _gather_directions(Bs, offsets)  # [B, K, N, L]
    cs = _gather_directions(Cs, offsets)
    y = scan_function(impl)(
        us.reshape(b, k * di, length),
        ds.reshape(b, k * di, length),
        A,
        bs.contiguous(),
        cs.contiguous(),
        D,
        delta_bias,
        delta_softplus,
    )
    merge_offsets = torch.from_numpy(_merge_offsets_np(h, w)[:k].copy()).to(u.device)
    y = cross_merge(y.reshape(b, k, di, length), merge_idx, merge_offsets)  # [B, Di, L]
    return y.reshape(b, di, h, w)


def project_dt(dt_low: Tensor, dt_weight: Tensor) -> Tensor:
    """Version 3's delta: ``[B, K, R, H, W]`` x ``[K*Di, R]`` -> ``[B, K, Di, H, W]``,
    ``delta[b, k, c, h, w] = sum_r dt_weight[k*Di + c, r] * dt_low[b, k, r, h, w]`` (one
    matmul, the K projections stacked)."""
    b, k, r, h, w = dt_low.shape
    di = dt_weight.shape[0] // k
    delta = torch.matmul(dt_weight.reshape(k, di, r), dt_low.reshape(b, k, r, h * w))
    return delta.reshape(b, k, di, h, w)


def selective_scan_2d_low_rank(
    u: Tensor,
    dt_low: Tensor,
    dt_weight: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
    impl: str = "ref",
) -> Tensor:
    """``fer_edge::SelectiveScan2D``, version 3 form (docs/model-contract.md), in PyTorch:
    :func:`selective_scan_2d` on the delta of :func:`project_dt`. Differentiable."""
    check_shapes_2d_low_rank(u, dt_low, dt_weight, A, Bs, Cs)
    delta = project_dt(dt_low, dt_weight)
    return selective_scan_2d(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, impl)


@torch.library.custom_op("fer_edge::selective_scan_2d", mutates_args=())
def selective_scan_2d_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """``fer_edge::selective_scan_2d``: exported as one fer_edge::SelectiveScan2D node.

    Only the export path calls it (no autograd): eager code calls
    :func:`selective_scan_2d`."""
    with torch.no_grad():
        return selective_scan_2d(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, "fast")


@selective_scan_2d_op.register_fake
def _(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus):
    check_shapes_2d(u, delta, A, Bs, Cs)
    return torch.empty_like(u)


def scan_2d(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus: bool, impl: str) -> Tensor:
    """What SS2D's export path calls: the custom op while ``torch.export`` traces (one
    ONNX node), :func:`selective_scan_2d` with the scan ``impl`` otherwise."""
    if torch.compiler.is_exporting():
        return torch.ops.fer_edge.selective_scan_2d(
            u, delta, A, Bs, Cs, D, delta_bias, bool(delta_softplus)
        )
    return selective_scan_2d(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, impl)


@torch.library.custom_op("fer_edge::selective_scan_2d_low_rank", mutates_args=())
def selective_scan_2d_low_rank_op(
    u: Tensor,
    dt_low: Tensor,
    dt_weight: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """``fer_edge::selective_scan_2d_low_rank``: exported as one version 3
    fer_edge::SelectiveScan2D node (8 inputs).

    Only the export path calls it (no autograd): eager code calls
    :func:`selective_scan_2d_low_rank`."""
    with torch.no_grad():
        return selective_scan_2d_low_rank(
            u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus, "fast"
        )


@selective_scan_2d_low_rank_op.register_fake
def _(u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus):
    check_shapes_2d_low_rank(u, dt_low, dt_weight, A, Bs, Cs)
    return torch.empty_like(u)


def scan_2d_low_rank(
    u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus: bool, impl: str
) -> Tensor:
    """:func:`scan_2d` for version 3: the custom op while ``torch.export`` traces (one
    8-input ONNX node), :func:`selective_scan_2d_low_rank` with the scan ``impl``
    otherwise."""
    if torch.compiler.is_exporting():
        return torch.ops.fer_edge.selective_scan_2d_low_rank(
            u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, bool(delta_softplus)
        )
    return selective_scan_2d_low_rank(
        u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus, impl
    )
