"""Measurements quoted in training/README.md.

python -m fer_edge_training.bench scan   [--b 8 --kd 1024 --n 16 --l 1024 --g 8 --threads 1
                                          --impls native fast ref]
python -m fer_edge_training.bench macs   [--variant s --size 320]
python -m fer_edge_training.bench peers  [--variant s --size 320 --threads 1 2 --runs 10
                                          --fer-edge ../target/release/fer-edge]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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


def _median_ms(run, runs: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _fer_edge_infer_ms(binary: str, model_path: str, threads: int, runs: int) -> float:
    """Median `infer` stage of `fer-edge bench` (the network alone, like the peers)."""
    image = Path(__file__).resolve().parents[2] / "samples" / "obama.jpg"
    done = subprocess.run(
        [binary, "bench", "--model", model_path, "--threads", str(threads)]
        + ["--frames", str(runs), "--warmup", "2", "--image", str(image)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{binary} bench failed:\n{done.stderr}")
    out = done.stdout
    for line in out.splitlines():
        if line.startswith("infer "):
            return float(line.split()[1])
    raise RuntimeError(f"no infer line in fer-edge bench output:\n{out}")


def bench_peers(variant: str, size: int, threads: list[int], runs: int, binary: str) -> None:
    """Whole-network latency, same weights and machine, in one run: fer-edge (tract +
    the SelectiveScan op), onnxruntime on the Scan-op twin, PyTorch eager (fast scan)."""
    import onnxruntime as ort

    from .export import build, check_and_save, export_model
    from .onnx_graph import make_scan_twin

    model = build(variant, 0, None, size).eval()
    main_graph = export_model(model, size)
    twin = make_scan_twin(main_graph)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    # fer-edge first, for every thread count, while this process has not yet
    # started the thread pools of onnxruntime or torch (whose idle workers spin).
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, f"{variant}.onnx")
        check_and_save(main_graph, model_path)
        fer = {n: _fer_edge_infer_ms(binary, model_path, n, runs) for n in threads}
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            twin.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

        def torch_run():
            with torch.inference_mode():
                model(xt)

        onnxrt = _median_ms(lambda: sess.run(None, {"images": x}), runs)  # noqa: B023
        eager = _median_ms(torch_run, runs)
        rows.append((n, fer[n], onnxrt, eager))
    print(f"{variant} at {size}x{size}, median of {runs} runs (ms)")
    print(
        "| threads | fer-edge | onnxruntime (Scan twin) | PyTorch eager "
        "| ort / fer-edge | torch / fer-edge |"
    )
    print("|---|---|---|---|---|---|")
    for n, fer_ms, onnxrt, eager in rows:
        print(
            f"| {n} | {fer_ms:.0f} | {onnxrt:.0f} | {eager:.0f} | "
            f"{onnxrt / fer_ms:.1f}x | {eager / fer_ms:.1f}x |"
        )


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
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fer-edge", default="../target/release/fer-edge", help="fer-edge binary")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads[0])
    if a.what == "scan":
        bench_scan(a.b, a.kd, a.n, a.l, a.g, repeat=a.repeat, impls=tuple(a.impls))
    elif a.what == "macs":
        count_macs(a.variant, a.size)
    else:
        bench_peers(a.variant, a.size, a.threads, a.runs, a.fer_edge)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
