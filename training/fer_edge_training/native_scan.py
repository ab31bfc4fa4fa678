"""Native CPU selective scan for training: a C++ torch extension (csrc/selective_scan.cpp).

Same function, signature and gradients as :func:`.scan.selective_scan_ref` (u, delta,
A, Bs, Cs, D, delta_bias, delta_softplus), with a forward and a backward kernel written
for a small CPU: SIMD lanes over the channels of a group, the state in registers, one
task per (batch, group) on torch's thread pool; the backward pass recomputes the states
(nothing but the inputs and ``dt`` is kept between the passes).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a
C++ compiler and ``ninja``) into ``training/.build/selective_scan/``; later processes
reuse that build. If it cannot be built, :func:`selective_scan_native` warns once and
runs :func:`.scan.selective_scan_fast` instead. It also does so, silently, for inputs
the kernels do not take (not on the CPU, dtype other than float32/float64, N > 64).

Training uses it through ``set_scan_impl(model, "native")`` (:mod:`.scan`); the ONNX
export path does not depend on it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .scan import _check_shapes, _dt, selective_scan_fast

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
#: Default build directory (inside the repository, next to the package).
BUILD_DIR = Path(__file__).resolve().parents[1] / ".build" / "selective_scan"
EXT_NAME = "fer_edge_selective_scan"
#: Largest number of states per channel the kernels support.
MAX_N = 64
#: Set to "0" to never build or use the extension (always the fallback, no warning).
ENV_DISABLE = "FER_EDGE_NATIVE_SCAN"

CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_ext = None
_tried = False


def _ninja_on_path() -> None:
    """Make the ``ninja`` of this Python environment visible to cpp_extension."""
    if shutil.which("ninja"):
        return
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        dirs.insert(0, ninja.BIN_DIR)
    except ImportError:
        pass
    for d in dirs:
        if os.path.exists(os.path.join(d, "ninja")):
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return


def build(build_dir: str | os.PathLike | None = None, verbose: bool = False):
    """Compile (or load the cached build of) the extension and return its module.

    Raises whatever the build raises; :func:`load` is the non-raising, cached entry.
    """
    from torch.utils.cpp_extension import load as load_cpp

    _ninja_on_path()
    path = Path(build_dir) if build_dir is not None else BUILD_DIR
    path.mkdir(parents=True, exist_ok=True)
    return load_cpp(
        name=EXT_NAME,
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(path),
        verbose=verbose,
    )


def _why(e: Exception) -> str:
    """The telling line of a build error (ninja's last line is only 'build stopped')."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "not found" in low or "error:" in low or "no such file" in low:
            return ln
    return lines[-1] if lines else ""


def load():
    """The extension module, built on first call; ``None`` (one warning) if it cannot be."""
    global _ext, _tried
    if _tried:
        return _ext
    with _lock:
        if _tried:
            return _ext
        if os.environ.get(ENV_DISABLE, "1") == "0":
            _ext = None
        else:
            try:
                _ext = build()
            except Exception as e:  # no compiler, no ninja, compile error, ...
                warnings.warn(
                    "native selective scan unavailable, using selective_scan_fast instead "
                    f"({type(e).__name__}: {_why(e)}); build log: "
                    f"python -c 'from fer_edge_training import native_scan; "
                    f"native_scan.build(verbose=True)'",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _ext = None
        _tried = True
    return _ext


def available() -> bool:
    """True if the native kernels can be used (builds them on first call)."""
    return load() is not None


def _reset_for_tests(ext=None, tried: bool = False) -> None:
    global _ext, _tried
    _ext, _tried = ext, tried


class _NativeScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, u, delta, A, Bs, Cs, D, delta_bias, delta_softplus):
        u, A, Bs, Cs = (t.contiguous() for t in (u, A, Bs, Cs))
        D = None if D is None else D.contiguous()
        dt = _dt(delta, delta_bias, delta_softplus).contiguous()
        y = ext.forward(u, dt, A, Bs, Cs, D)
        ctx.save_for_backward(u, dt, A, Bs, Cs, D)
        ctx.ext = ext
        ctx.delta_softplus = bool(delta_softplus)
        ctx.has_bias = delta_bias is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, Bs, Cs, D = ctx.saved_tensors
        g_u, g_delta, g_a, g_b, g_c, g_d, g_bias = ctx.ext.backward(
            gy.contiguous(), u, dt, A, Bs, Cs, D, ctx.delta_softplus
        )
        return (
            None,
            g_u,
            g_delta,
            g_a,
            g_b,
            g_c,
            g_d if D is not None else None,
            g_bias if ctx.has_bias else None,
            None,
        )


def _supported(u, delta, A, Bs, Cs, D, delta_bias) -> bool:
    tensors = [t for t in (u, delta, A, Bs, Cs, D, delta_bias) if t is not None]
    dtype = u.dtype
    return (
        dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
        and A.shape[-1] <= MAX_N
    )


def selective_scan_native(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
) -> Tensor:
    """Same maths, signature and gradients as :func:`.scan.selective_scan_ref`, native."""
    _check_shapes(u, delta, A, Bs, Cs)
    if _supported(u, delta, A, Bs, Cs, D, delta_bias):
        ext = load()
        if ext is not None:
            return _NativeScanFn.apply(ext, u, delta, A, Bs, Cs, D, delta_bias, delta_softplus)
    return selective_scan_fast(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus)
