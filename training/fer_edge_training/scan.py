"""The selective scan of FER-YOLO-Mamba (MODEL.md, "The selective scan").

Shapes (all float32 in the model, float64 accepted for checking):

* ``u``, ``delta``: ``[B, KD, L]``
* ``A``: ``[KD, N]`` (negative: ``A = -exp(A_log)``)
* ``Bs``, ``Cs``: ``[B, G, N, L]``; channel ``c`` uses group ``c // (KD // G)``
* ``D``, ``delta_bias``: ``[KD]``

Maths::

    dt[c,t]  = softplus(delta[c,t] + delta_bias[c])         (if delta_softplus)
    h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] Bs[g(c),n,t] u[c,t],  h[.,.,-1] = 0
    y[c,t]   = sum_n Cs[g(c),n,t] h[c,n,t] + D[c] u[c,t]

Three implementations live here:

* :func:`selective_scan_ref`: the plain recurrence, one Python step per time step. It is
  the definition the tests trust.
* :func:`selective_scan_fast`: a :class:`torch.autograd.Function` with a chunked forward
  and a hand-written reverse-time backward that recomputes the states chunk by chunk.
* ``torch.ops.fer_edge.selective_scan``: a ``torch.library`` custom op that runs the
  same fast kernels eagerly (with the same backward) and that the ONNX exporter
  translates into exactly one ``fer_edge::SelectiveScan`` node (see :mod:`.export`).

:class:`SelectiveScan` is the entry point the model uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Default number of time steps processed per chunk by the fast implementation.
CHUNK = 8

ONNX_DOMAIN = "fer_edge"
ONNX_OP_TYPE = "SelectiveScan"
ONNX_OP_VERSION = 1


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor) -> tuple:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be [B, KD, L], got {tuple(u.shape)}, {delta.shape}")
    b, kd, length = u.shape
    if A.dim() != 2 or A.shape[0] != kd:
        raise ValueError(f"A must be [KD={kd}, N], got {tuple(A.shape)}")
    n = A.shape[1]
    if Bs.dim() != 4 or Bs.shape[0] != b or Bs.shape[2] != n or Bs.shape[3] != length:
        raise ValueError(f"Bs must be [B, G, N, L], got {tuple(Bs.shape)}")
    if Cs.shape != Bs.shape:
        raise ValueError(f"Cs must have the shape of Bs, got {tuple(Cs.shape)}")
    g = Bs.shape[1]
    if kd % g != 0:
        raise ValueError(f"KD={kd} is not a multiple of the number of groups G={g}")
    return b, kd, length, n, g


def _dt(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    x = delta if delta_bias is None else delta + delta_bias[None, :, None]
    return F.softplus(x) if delta_softplus else x


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
) -> Tensor:
    """Reference selective scan: the recurrence of MODEL.md, one step per time index."""
    b, kd, length, n, g = _check_shapes(u, delta, A, Bs, Cs)
    dg = kd // g  # channels per group: channel c = gi * dg + d uses Bs[:, gi], Cs[:, gi]
    dt = _dt(delta, delta_bias, delta_softplus)  # [B, KD, L]
    a = A.reshape(g, dg, n)
    h = u.new_zeros(b, g, dg, n)
    ys = []
    # unbind (not indexing) so that autograd through this loop stays linear in L
    steps = zip(dt.unbind(-1), u.unbind(-1), Bs.unbind(-1), Cs.unbind(-1), strict=True)
    for dt_t, u_t, b_t, c_t in steps:
        dt_t = dt_t.reshape(b, g, dg, 1)
        u_t = u_t.reshape(b, g, dg, 1)
        h = torch.exp(dt_t * a) * h + dt_t * b_t[:, :, None, :] * u_t
        ys.append((h * c_t[:, :, None, :]).sum(-1).reshape(b, kd))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[None, :, None] * u
    return y


# --------------------------------------------------------------------------------------
# Fast kernels
#
# Layout inside a chunk of T steps: time-major [T, B, G, Dg, N] (Dg = KD // G) so that
# the state of step t is one contiguous slab and the sequential part of the recurrence is
# one fused multiply-add per step (addcmul_) over B*KD*N numbers.  Everything that does
# not depend on the previous state (the decays exp(dt*A), the inputs dt*B*u, the
# read-out with C, every gradient term) is computed for the whole chunk at once.
# The only exponentials are exp(dt*A) with dt >= 0 and A < 0, i.e. of non-positive
# numbers, so nothing can overflow.
#
# Why not the log-space form inside a chunk (h[t] = sum_s exp(S[t] - S[s]) x[s] with
# S = cumsum(dt*A)): A is diagonal per (channel, state), so the decay matrix cannot be
# shared across states as in Mamba-2; it costs T*T/2 exponentials per (b, c, n) and
# chunk instead of T, and on a CPU (memory- and exp-bound, no tensor cores) that is
# slower than T cheap fused multiply-adds: measured forward-only at B=8, KD=1024, N=16,
# L=1024 on one core, 6.7 s (T=4) to 34 s (T=16) against 0.6-1.0 s for the code below.
# The sequential form also keeps exactly the
# arithmetic of the reference, so forward results agree to rounding of the read-out.
# --------------------------------------------------------------------------------------


def _time_major(x: Tensor) -> Tensor:
    """Move the last (time) axis first, as a contiguous tensor.

    Done as a 2-D transpose ([rest, L] -> [L, rest]): PyTorch copies 2-D transposes with a
    blocked kernel, several times faster than a general permute.
    """
    length = x.shape[-1]
    flat = x.reshape(-1, length).t()
    return (
        torch.empty_like(flat, memory_format=torch.contiguous_format)
        .copy_(flat)
        .reshape(length, *x.shape[:-1])
    )


def _from_time_major(x: Tensor) -> Tensor:
    """Inverse of :func:`_time_major` (contiguous)."""
    length = x.shape[0]
    flat = x.reshape(length, -1).t()
    return (
        torch.empty_like(flat, memory_format=torch.contiguous_format)
        .copy_(flat)
        .reshape(*x.shape[1:], length)
    )


class _Work:
    """Time-major views of the inputs and reusable chunk buffers.

    Buffers are allocated once per call and reused by every chunk (out= / in-place ops):
    fresh multi-MB tensors per chunk would each cost page faults, and reusing a few
    buffers of T steps keeps the working set in cache.
    """

    def __init__(self, u, dt, A, Bs, Cs, chunk):
        b, kd, length = u.shape
        g, n = Bs.shape[1], A.shape[1]
        dg = kd // g
        self.b, self.kd, self.length, self.g, self.dg, self.n = b, kd, length, g, dg, n
        self.chunk = chunk = min(chunk, length)
        self.dt = _time_major(dt).reshape(length, b, g, dg, 1)
        self.u = _time_major(u).reshape(length, b, g, dg, 1)
        self.dtu = self.dt * self.u
        self.bs = _time_major(Bs).reshape(length, b, g, 1, n)
        self.cs = _time_major(Cs).reshape(length, b, g, n, 1)
        self.a5 = A.reshape(1, 1, g, dg, n)
        self.decay = u.new_empty(chunk, b, g, dg, n)
        self.states = u.new_empty(chunk, b, g, dg, n)
        self.starts = list(range(0, length, chunk))

    def span(self, i: int) -> tuple[int, int, int]:
        c0 = self.starts[i]
        c1 = min(c0 + self.chunk, self.length)
        return c0, c1, c1 - c0

    def states_of_chunk(self, i: int, h0: Tensor) -> tuple[Tensor, Tensor]:
        """Decays exp(dt*A) and states h of chunk i (views of the shared buffers)."""
        c0, c1, t = self.span(i)
        decay = torch.mul(self.dt[c0:c1], self.a5, out=self.decay[:t]).exp_()
        states = torch.mul(self.dtu[c0:c1], self.bs[c0:c1], out=self.states[:t])
        # the only sequential part: one fused multiply-add per step over B*KD*N numbers
        states[0].addcmul_(decay[0], h0)
        for s in range(1, t):
            states[s].addcmul_(decay[s], states[s - 1])
        return decay, states


def _scan_forward(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, chunk):
    """Returns y [B, KD, L], the states at every chunk start [nchunks, B, G, Dg, N], dt."""
    _check_shapes(u, delta, A, Bs, Cs)
    dt = _dt(delta, delta_bias, delta_softplus)
    w = _Work(u, dt, A, Bs, Cs, chunk)
    y_tm = u.new_empty(w.length, w.b, w.g, w.dg, 1)
    h0s = u.new_empty(len(w.starts), w.b, w.g, w.dg, w.n)
    h0s[0].zero_()
    for i in range(len(w.starts)):
        c0, c1, t = w.span(i)
        _, states = w.states_of_chunk(i, h0s[i])
        torch.matmul(states, w.cs[c0:c1], out=y_tm[c0:c1])  # sum_n C h
        if i + 1 < len(w.starts):
            h0s[i + 1].copy_(states[t - 1])
    y = _from_time_major(y_tm.reshape(w.length, w.b, w.kd))
    if D is not None:
        y = y + D[None, :, None] * u
    return y, h0s, dt


def _scan_backward(gy, u, dt, A, Bs, Cs, D, delta_bias, delta_softplus, h0s, chunk):
    """Gradients of (u, delta, A, Bs, Cs, D, delta_bias) given dL/dy and the forward's dt.

    Reverse-time recurrence on g[t] = dL/dh[t] (total):
        g[t] = Cs[t] * gy[t] + exp(dt[t+1] A) * g[t+1]
    then, with hp[t] = h[t-1] and a[t] = exp(dt[t] A),
        dL/d(dt[t]) = sum_n g A a hp + sum_n g Bs u
        dL/dA       = sum_{b,t} g a hp dt
        dL/dBs[t]   = sum_{c in group} g dt u
        dL/du[t]    = dt sum_n g Bs + D gy
        dL/dCs[t]   = sum_{c in group} gy h
        dL/d(delta) = dL/d(dt) * sigmoid(delta + delta_bias)   (softplus'),
    where sigmoid(x) = 1 - exp(-softplus(x)) = -expm1(-dt) needs no second softplus.
    States are recomputed chunk by chunk from the saved chunk-start states.
    """
    _check_shapes(u, dt, A, Bs, Cs)
    w = _Work(u, dt, A, Bs, Cs, chunk)
    b, g, dg, n, length = w.b, w.g, w.dg, w.n, w.length
    gy_tm = _time_major(gy).reshape(length, b, g, dg, 1)

    g_u = u.new_empty(length, b, g, dg, 1)
    g_dt = u.new_empty(length, b, g, dg, 1)
    g_b = u.new_empty(length, b, g, 1, n)
    g_c = u.new_empty(length, b, g, 1, n)
    g_a = u.new_zeros(1, 1, g, dg, n)
    gh_buf = torch.empty_like(w.states)
    p_buf = torch.empty_like(w.states)
    carry = u.new_zeros(b, g, dg, n)  # a[t+1] * g[t+1] coming from the future
    for i in reversed(range(len(w.starts))):
        c0, c1, t = w.span(i)
        h0 = h0s[i]
        decay, states = w.states_of_chunk(i, h0)
        gy_c = gy_tm[c0:c1]
        # dL/dCs = sum over the channels of the group of gy * h
        torch.matmul(gy_c.transpose(-1, -2), states, out=g_c[c0:c1])
        # reverse-time recurrence for g
        gh = torch.mul(gy_c, w.cs[c0:c1].transpose(-1, -2), out=gh_buf[:t])
        gh[t - 1].add_(carry)
        for s in range(t - 2, -1, -1):
            gh[s].addcmul_(decay[s + 1], gh[s + 1])
        torch.mul(decay[0], gh[0], out=carry)
        # p = dL/d(dt*A) = g * a * h[t-1]
        p = torch.mul(gh, decay, out=p_buf[:t])
        p[0].mul_(h0)
        p[1:].mul_(states[:-1])
        tmp = decay  # decays no longer needed: reuse the buffer
        g_a += torch.mul(p, w.dt[c0:c1], out=tmp).sum(dim=(0, 1), keepdim=True)
        s_b = torch.matmul(gh, w.bs[c0:c1].transpose(-1, -2))  # sum_n g B  [T,B,G,Dg,1]
        g_dt_c = torch.mul(p, w.a5, out=tmp).sum(-1, keepdim=True)
        torch.addcmul(g_dt_c, s_b, w.u[c0:c1], out=g_dt[c0:c1])
        torch.mul(s_b, w.dt[c0:c1], out=g_u[c0:c1])
        torch.matmul(w.dtu[c0:c1].transpose(-1, -2), gh, out=g_b[c0:c1])
    g_u = _from_time_major(g_u.reshape(length, b, w.kd))
    g_dt = _from_time_major(g_dt.reshape(length, b, w.kd))
    g_b = _from_time_major(g_b.reshape(length, b, g, n))
    g_c = _from_time_major(g_c.reshape(length, b, g, n))
    g_d = None
    if D is not None:
        g_u = g_u + gy * D[None, :, None]
        g_d = (gy * u).sum(dim=(0, 2))
    g_delta = g_dt * torch.expm1(-dt).neg_() if delta_softplus else g_dt
    g_bias = None if delta_bias is None else g_delta.sum(dim=(0, 2))
    return g_u, g_delta, g_a.reshape(w.kd, n), g_b, g_c, g_d, g_bias


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, chunk):
        y, h0s, dt = _scan_forward(u, delta, A, Bs, Cs, D, delta_bias, bool(delta_softplus), chunk)
        ctx.save_for_backward(u, dt, A, Bs, Cs, D, delta_bias, h0s)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, Bs, Cs, D, delta_bias, h0s = ctx.saved_tensors
        grads = _scan_backward(
            gy.contiguous(), u, dt, A, Bs, Cs, D, delta_bias, ctx.delta_softplus, h0s, ctx.chunk
        )
        return (*grads, None, None)


def selective_scan_fast(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
    chunk: int = CHUNK,
) -> Tensor:
    """Same maths and signature as :func:`selective_scan_ref`, chunked, hand-written backward.

    Memory kept for the backward pass: the inputs and one state per chunk
    (``[L / chunk, B, KD, N]``); the per-step states are recomputed in the backward pass.
    """
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    return _SelectiveScanFn.apply(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, chunk)


# --------------------------------------------------------------------------------------
# Custom op: what the model calls, and what the ONNX exporter sees.
# --------------------------------------------------------------------------------------


@torch.library.custom_op("fer_edge::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """``fer_edge::selective_scan``: the fast forward; exported as fer_edge::SelectiveScan."""
    y, _, _ = _scan_forward(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus, CHUNK)
    return y


@selective_scan_op.register_fake
def _(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus):
    _check_shapes(u, delta, A, Bs, Cs)
    return torch.empty_like(u)


def _op_setup_context(ctx, inputs, output):
    u, delta, A, Bs, Cs, D, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, Bs, Cs, D, delta_bias)
    ctx.delta_softplus = delta_softplus


def _op_backward(ctx, gy):
    u, delta, A, Bs, Cs, D, delta_bias = ctx.saved_tensors
    sp = ctx.delta_softplus
    # The custom op does not return the chunk states: recompute them (one extra forward
    # pass over the recurrence, still far cheaper than autograd through the reference).
    with torch.no_grad():
        _, h0s, dt = _scan_forward(u, delta, A, Bs, Cs, D, delta_bias, sp, CHUNK)
    grads = _scan_backward(gy.contiguous(), u, dt, A, Bs, Cs, D, delta_bias, sp, h0s, CHUNK)
    return (*grads, None)


selective_scan_op.register_autograd(_op_backward, setup_context=_op_setup_context)


class SelectiveScan(nn.Module):
    """The scan entry point used by SS2D.

    ``impl``:
      * ``"fast"`` (default): eager training/inference through :func:`selective_scan_fast`;
      * ``"ref"``: the reference recurrence (golden outputs, tests);
      * ``"native"``: the C++ CPU kernels of :mod:`.native_scan` (training: the trainer
        selects it with ``set_scan_impl(model, "native")``), compiled on first use, with a
        warning and ``"fast"`` instead if they cannot be built.

    Whatever ``impl`` says, while ``torch.export`` / ``torch.onnx.export`` traces the model
    (``torch.compiler.is_exporting()``) the call goes through the custom op
    ``fer_edge::selective_scan``, which the ONNX exporter turns into one
    ``fer_edge::SelectiveScan`` node.
    """

    IMPLS = ("fast", "ref", "native")

    def __init__(self, delta_softplus: bool = True, impl: str = "fast") -> None:
        super().__init__()
        self.delta_softplus = delta_softplus
        self.impl = impl

    def extra_repr(self) -> str:
        return f"delta_softplus={self.delta_softplus}, impl={self.impl!r}"

    def forward(self, u, delta, A, Bs, Cs, D, delta_bias):
        if self.impl not in self.IMPLS:
            raise ValueError(f"unknown scan impl {self.impl!r}")
        if torch.compiler.is_exporting():
            return torch.ops.fer_edge.selective_scan(
                u, delta, A, Bs, Cs, D, delta_bias, self.delta_softplus
            )
        scan = scan_function(self.impl)
        return scan(u, delta, A, Bs, Cs, D, delta_bias, self.delta_softplus)


def scan_function(impl: str):
    """The eager selective scan of ``impl`` (one of :attr:`SelectiveScan.IMPLS`); "native"
    is the C++ kernels of :mod:`.native_scan`, which fall back to "fast" where unsupported."""
    if impl == "fast":
        return selective_scan_fast
    if impl == "ref":
        return selective_scan_ref
    if impl == "native":
        from .native_scan import selective_scan_native

        return selective_scan_native
    raise ValueError(f"unknown scan impl {impl!r}")


def set_scan_impl(module: nn.Module, impl: str) -> nn.Module:
    """Set ``impl`` on every :class:`SelectiveScan` inside ``module``; returns ``module``."""
    if impl not in SelectiveScan.IMPLS:
        raise ValueError(f"unknown scan impl {impl!r}")
    for m in module.modules():
        if isinstance(m, SelectiveScan):
            m.impl = impl
    return module
