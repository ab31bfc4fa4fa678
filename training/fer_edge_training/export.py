"""Export FER-YOLO-Mamba to ONNX, its Scan twin, golden tensors and the tiny block models.

Usage (from ``training/``)::

    python -m fer_edge_training.export --variant nano --size 320 --seed 0 \\
        --output ../models/fer-yolo-mamba-nano.onnx \\
        --golden ../tests/data/golden --block ../tests/data/vss_block

Models are written in ONNX contract version 3 (``docs/model-contract.md``: one
``fer_edge::SelectiveScan2D`` node per SS2D block, the dt projection inside it) unless
``--scan-op-version`` asks for an older form: 2, the dt projection's ``MatMul`` before a
7-input ``SelectiveScan2D``; 1, cross-scan Gather, ``fer_edge::SelectiveScan``, merge
Gather.
See ``training/README.md`` for what every output is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxscript
import torch
from torch import nn

from .decode import decode, decode_candidates
from .model import (
    CLASSES,
    FerVSSBlock,
    FerYoloMamba,
    build_model,
    count_parameters,
    restore_scan_op_version,
    set_scan_op_version,
)
from .onnx_graph import (
    count_ops,
    ensure_opset,
    make_scan_twin,
    register_onnx_schema,
    set_confidence,
    strip_metadata,
)
from .preprocess import letterbox_size, load_rgb, preprocess
from .scan import ONNX_DOMAIN, ONNX_OP_TYPE, ONNX_OP_VERSION, set_scan_impl
from .scan2d import ONNX_OP_TYPE_2D, ONNX_OP_VERSION_2D, ONNX_OP_VERSION_2D_LOW_RANK

OPSET = 18
OUTPUT_NAMES = ["level0", "level1", "level2"]
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = REPO_ROOT / "samples" / "obama.jpg"

# --------------------------------------------------------------------------------------
# torch -> ONNX
# --------------------------------------------------------------------------------------

#: Contract versions the exporter writes (docs/model-contract.md), and its default.
SCAN_OP_VERSIONS = (ONNX_OP_VERSION, ONNX_OP_VERSION_2D, ONNX_OP_VERSION_2D_LOW_RANK)
DEFAULT_SCAN_OP_VERSION = ONNX_OP_VERSION_2D_LOW_RANK

_FER_EDGE = onnxscript.values.Opset(ONNX_DOMAIN, ONNX_OP_VERSION)
_FER_EDGE_2 = onnxscript.values.Opset(ONNX_DOMAIN, ONNX_OP_VERSION_2D)
_FER_EDGE_3 = onnxscript.values.Opset(ONNX_DOMAIN, ONNX_OP_VERSION_2D_LOW_RANK)


def _selective_scan_to_onnx(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus):
    """onnxscript translation of torch.ops.fer_edge.selective_scan: one custom node."""
    return _FER_EDGE.SelectiveScan(
        u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=int(bool(delta_softplus))
    )


def _selective_scan_2d_to_onnx(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus):
    """onnxscript translation of torch.ops.fer_edge.selective_scan_2d: one custom node."""
    return _FER_EDGE_2.SelectiveScan2D(
        u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=int(bool(delta_softplus))
    )


def _selective_scan_2d_low_rank_to_onnx(
    u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus
):
    """onnxscript translation of torch.ops.fer_edge.selective_scan_2d_low_rank: one
    custom node, SelectiveScan2D's version 3 form (8 inputs)."""
    return _FER_EDGE_3.SelectiveScan2D(
        u, dt_low, dt_weight, A, Bs, Cs, D, delta_bias, delta_softplus=int(bool(delta_softplus))
    )


def torch_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int = OPSET,
    quiet: bool = True,
    scan_op_version: int = DEFAULT_SCAN_OP_VERSION,
) -> onnx.ModelProto:
    """Export with the torch.export-based exporter; the scans -> fer_edge nodes.

    ``scan_op_version`` 3 (default): every SS2D block computes its ``x_proj`` projection
    in grid order and becomes one 8-input ``SelectiveScan2D`` node that does the dt
    projection too; 2: the same with the dt projection in the graph (a ``MatMul``) and a
    7-input ``SelectiveScan2D``; 1: the training computation, a cross-scan ``Gather``,
    one ``SelectiveScan`` node and the merge (see :class:`~.model.SS2D`). The result is checked
    (onnx.checker, full check with shape inference), stripped of per-node metadata, and
    has ``fer_edge`` at ``scan_op_version`` in its opset_import.
    """
    if scan_op_version not in SCAN_OP_VERSIONS:
        raise ValueError(f"scan_op_version must be one of {SCAN_OP_VERSIONS}")
    register_onnx_schema()
    module = module.eval()
    sink = io.StringIO()
    redirect = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    previous = set_scan_op_version(module, scan_op_version)
    try:
        with warnings.catch_warnings(), redirect:
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                custom_translation_table={
                    torch.ops.fer_edge.selective_scan.default: _selective_scan_to_onnx,
                    torch.ops.fer_edge.selective_scan_2d.default: _selective_scan_2d_to_onnx,
                    torch.ops.fer_edge.selective_scan_2d_low_rank.default: (
                        _selective_scan_2d_low_rank_to_onnx
                    ),
                },
                external_data=False,
                optimize=True,
                verbose=False,
            )
    finally:
        restore_scan_op_version(previous)
    model = program.model_proto
    strip_metadata(model)
    ensure_opset(model, ONNX_DOMAIN, scan_op_version)
    model.producer_name = "fer_edge_training"
    onnx.checker.check_model(model, full_check=True)
    return model


def check_and_save(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Check, save as one self-contained file, return its size in bytes."""
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path.stat().st_size


def export_model(
    model: FerYoloMamba, size: int, scan_op_version: int = DEFAULT_SCAN_OP_VERSION
) -> onnx.ModelProto:
    """Main graph: input ``images`` [1,3,S,S]; outputs ``level0..2``."""
    x = torch.zeros(1, 3, size, size)
    return torch_to_onnx(model, (x,), ["images"], OUTPUT_NAMES, scan_op_version=scan_op_version)


# --------------------------------------------------------------------------------------
# Runtimes used to verify the exports
# --------------------------------------------------------------------------------------


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnx.reference with the numpy fer_edge::SelectiveScan and SelectiveScan2D."""
    from onnx.reference import ReferenceEvaluator

    from .onnx_graph import REFERENCE_OPS

    return ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)


# --------------------------------------------------------------------------------------
# Model building
# --------------------------------------------------------------------------------------


def smooth_noise(batch: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Image-like noise: a sum of upsampled random fields (coarse to fine), unit variance."""
    x = torch.zeros(batch, 3, size, size)
    for cells, amp in ((4, 1.0), (16, 0.5), (64, 0.25), (size, 0.1)):
        f = torch.randn(batch, 3, cells, cells, generator=g)
        x += amp * torch.nn.functional.interpolate(f, size=(size, size), mode="bilinear")
    return x / x.std()


def calibrate_bn(model: nn.Module, size: int, seed: int, batches: int = 2, batch: int = 2):
    """Set every BatchNorm's running statistics from forward passes on seeded noise.

    With PyTorch's default init and BN's initial statistics (mean 0, var 1) the signal of a
    random network fades layer after layer, and its raw outputs are nearly constant
    (std ~3e-4): useless as golden data. Calibrated statistics keep activations O(1), so
    random-weight outputs vary from cell to cell like a real model's.
    """
    g = torch.Generator().manual_seed(seed + 1000)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(smooth_noise(batch, size, g))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    return model.eval()


#: Target (mean, std) of the raw output channels of the random placeholder model:
#: x, y offsets; log w, log h (boxes of ~2.5 strides); objectness; 7 class logits.
PLACEHOLDER_RAW_STATS = [(0.0, 0.3)] * 2 + [(0.9, 0.4)] * 2 + [(-3.0, 1.5)] + [(0.0, 1.5)] * 7


def shape_placeholder_outputs(model: FerYoloMamba, size: int, seed: int) -> FerYoloMamba:
    """Fold an affine map into the head's prediction convs so that, on seeded image-like
    noise, each raw output channel has the mean and std of :data:`PLACEHOLDER_RAW_STATS`.

    Only for random placeholder weights: their raw maps would otherwise be boxes of
    e^{+-10} strides and saturated scores, which exercise nothing in decode/NMS.
    """
    g = torch.Generator().manual_seed(seed + 2000)
    head = model.head
    with torch.no_grad():
        levels = model.eval()(smooth_noise(2, size, g))
        for i, raw in enumerate(levels):
            mean = raw.mean(dim=(0, 2, 3))
            std = raw.std(dim=(0, 2, 3)).clamp(min=1e-6)
            convs = [(head.reg_preds[i], 0), (head.obj_preds[i], 4), (head.cls_preds[i], 5)]
            for conv, first in convs:
                for j in range(conv.out_channels):
                    c = first + j
                    t_mean, t_std = PLACEHOLDER_RAW_STATS[c]
                    k = t_std / std[c]
                    conv.weight[j] *= k
                    conv.bias[j] = (conv.bias[j] - mean[c]) * k + t_mean
    return model


def build(variant: str, seed: int, checkpoint: str | None = None, size: int = 320) -> FerYoloMamba:
    """Model of ``variant`` in eval mode: a checkpoint, or the random placeholder: seeded
    init, BN statistics calibrated on seeded noise at ``size`` (:func:`calibrate_bn`),
    prediction layers rescaled (:func:`shape_placeholder_outputs`)."""
    torch.manual_seed(seed)
    model = build_model(variant)
    if not checkpoint:
        calibrate_bn(model, size, seed)
        return shape_placeholder_outputs(model, size, seed)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("ema", "model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    model.load_state_dict(state, strict=True)
    return model.eval()


def randomise_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial BN running statistics and norm affine parameters (test models only)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.normalized_shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=g) * 0.1)


# --------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------

#: Crops of the golden image for the preprocess goldens: (name, x, y, w, h, S).
PREPROCESS_CASES = [
    ("centre_300x200", None, None, 300, 200, 160),  # None: centred
    ("odd_333x127", 41, 203, 333, 127, 128),
    ("upscale_61x45", 200, 150, 61, 45, 128),
]


def choose_conf(levels: list[np.ndarray], size: int, iou: float) -> float:
    """A confidence threshold giving 2..30 detections, far from any candidate's score.

    Looks for the widest relative gap between consecutive sorted candidate scores (rank
    5..80), takes a round number inside it, and keeps it if NMS leaves 2..30 boxes.
    """
    _, scores = decode_candidates(levels, size)
    best = np.sort(scores.max(axis=1))[::-1].astype(np.float64)
    options = []
    for k in range(5, min(80, len(best) - 1)):
        hi, lo = best[k - 1], best[k]
        if lo <= 0:
            continue
        mid = float(np.sqrt(hi * lo))
        digits = 2 - int(np.floor(np.log10(mid)))
        conf = float(np.round(mid, digits))
        if not lo < conf < hi:
            continue
        margin = min(hi / conf, conf / lo)
        options.append((margin, k, conf))
    for _, _, conf in sorted(options, reverse=True):
        n = len(decode(levels, size, 1.0, None, conf, iou))
        if 2 <= n <= 30:
            return conf
    raise RuntimeError("no confidence threshold gives 2..30 detections")


def _crop_rect(img: np.ndarray, x, y, w, h) -> tuple[int, int, int, int]:
    ih, iw = img.shape[:2]
    if x is None:
        x = (iw - w) // 2
    if y is None:
        y = (ih - h) // 2
    if not (0 <= x and 0 <= y and x + w <= iw and y + h <= ih):
        raise ValueError(f"crop {x},{y},{w}x{h} outside the {iw}x{ih} image")
    return int(x), int(y), int(w), int(h)


def write_golden(
    model: FerYoloMamba,
    size: int,
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    iou: float = 0.45,
    conf: float | None = None,
) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = load_rgb(str(image_path))
    x, r = preprocess(img, size)
    np.save(out / "input.npy", x)
    set_scan_impl(model, "ref")
    try:
        with torch.no_grad():
            levels = [t.numpy().astype(np.float32) for t in model(torch.from_numpy(x))]
    finally:
        set_scan_impl(model, "fast")
    for i, lv in enumerate(levels):
        np.save(out / f"level{i}.npy", lv)
    if conf is None:
        conf = choose_conf(levels, size, iou)
    h, w = img.shape[:2]
    dets = decode(levels, size, r, (h, w), conf, iou)
    try:
        image_name = str(Path(image_path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        image_name = str(image_path)
    golden = {
        "image": image_name,
        "image_hw": [h, w],
        "size": size,
        "r": r,
        "conf": conf,
        "iou": iou,
        "classes": CLASSES,
        "strides": [size // lv.shape[2] for lv in levels],
        "detections": dets,
    }
    (out / "detections.json").write_text(json.dumps(golden, indent=1) + "\n")

    cases = []
    for name, cx, cy, cw, ch, s in PREPROCESS_CASES:
        x0, y0, cw, ch = _crop_rect(img, cx, cy, cw, ch)
        crop = np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])
        t, rr = preprocess(crop, s)
        nh, nw, _ = letterbox_size(ch, cw, s)
        np.save(out / f"crop_{name}.npy", crop)
        np.save(out / f"preprocess_{name}.npy", t)
        cases.append(
            {
                "name": name,
                "crop": {"x": x0, "y": y0, "w": cw, "h": ch},
                "size": s,
                "r": rr,
                "resized_hw": [nh, nw],
                "rgb": f"crop_{name}.npy",
                "output": f"preprocess_{name}.npy",
            }
        )
    meta = {
        "image": image_name,
        "decoder": "Pillow (crop_*.npy hold the decoded uint8 RGB crops, HxWx3)",
        "full_image": {"size": size, "r": r, "output": "input.npy"},
        "cases": cases,
    }
    (out / "preprocess.json").write_text(json.dumps(meta, indent=1) + "\n")
    return golden


# --------------------------------------------------------------------------------------
# Tiny block for op-level tests
# --------------------------------------------------------------------------------------

BLOCK_CHANNELS = 32  # SS2D d_model = 16
BLOCK_HW = (8, 6)  # H = 8, W = 6: non-square on purpose


def build_block(seed: int = 0) -> FerVSSBlock:
    torch.manual_seed(seed)
    block = FerVSSBlock(BLOCK_CHANNELS)
    randomise_norms(block, seed + 1)
    return block.eval()


#: Golden block files: contract version 2 (the form the Rust tests load as vss_block.onnx;
#: unchanged when version 3 became the exporter's default), version 1, the Scan twin.
BLOCK_FILES = {
    "vss_block.onnx": ONNX_OP_VERSION_2D,
    "vss_block_v1.onnx": ONNX_OP_VERSION,
    "vss_block_v3.onnx": ONNX_OP_VERSION_2D_LOW_RANK,
}


def write_block(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, int]:
    """The tiny block in the contract versions of :data:`BLOCK_FILES` (same weights), its
    Scan twin, an input and the PyTorch output (reference scan, training computation);
    every model is checked against that output (the onnx reference evaluator, onnxruntime
    for the twin)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    block = build_block(seed)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(1, BLOCK_CHANNELS, *BLOCK_HW, generator=g)
    set_scan_impl(block, "ref")
    with torch.no_grad():
        y = block(x)
    set_scan_impl(block, "fast")
    models = {
        name: torch_to_onnx(block, (x,), ["x"], ["y"], scan_op_version=version)
        for name, version in BLOCK_FILES.items()
    }
    models["vss_block_scan.onnx"] = make_scan_twin(models["vss_block_v1.onnx"])
    sizes = {name: check_and_save(m, out / name) for name, m in models.items()}
    np.save(out / "vss_block_input.npy", x.numpy())
    np.save(out / "vss_block_output.npy", y.numpy())
    feeds = {"x": x.numpy()}
    for name, m in models.items():
        run = run_onnxruntime if name == "vss_block_scan.onnx" else run_reference
        (got,) = run(m, feeds)
        err = float(np.abs(got - y.numpy()).max())
        print(f"block: {name} ({run.__name__}) vs PyTorch max abs diff {err:.2e}")
        if err > 1e-5:
            raise RuntimeError(f"block {name} disagrees with PyTorch: {err}")
    return sizes


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fer_edge_training.export", description=__doc__)
    ap.add_argument("--variant", default="nano", help="model variant (s, nano)")
    ap.add_argument("--size", type=int, default=320, help="input size S (multiple of 32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random init")
    ap.add_argument("--checkpoint", help="state_dict (.pt) to load instead of random weights")
    ap.add_argument("--output", help="main ONNX path (fer_edge scan nodes)")
    ap.add_argument(
        "--scan-op-version",
        type=int,
        choices=SCAN_OP_VERSIONS,
        default=DEFAULT_SCAN_OP_VERSION,
        help="ONNX contract version of --output (docs/model-contract.md): 3, one "
        "SelectiveScan2D node per SS2D block, dt projection included; 2, dt projection "
        "MatMul + SelectiveScan2D; 1, Gather + SelectiveScan + Gather (default %(default)s)",
    )
    ap.add_argument(
        "--confidence",
        type=float,
        help="the face score threshold the model was tuned at, written into --output's "
        "metadata (fer_edge.confidence, docs/model-contract.md); the runtime decodes at it "
        "unless its config or command line sets one (default: none, the runtime's 0.18)",
    )
    ap.add_argument("--scan-twin", help="also write the twin with standard ONNX Scan nodes")
    ap.add_argument("--golden", help="directory for golden tensors")
    ap.add_argument("--golden-image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--golden-conf", type=float, help="confidence (default: auto, 2..30 boxes)")
    ap.add_argument("--block", help="directory for the tiny VSS block models")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.size % 32:
        ap.error("--size must be a multiple of 32")
    if a.confidence is not None and not 0.0 < a.confidence <= 1.0:
        ap.error("--confidence must be in (0, 1]")
    if a.confidence is not None and not a.output:
        ap.error("--confidence is written into --output: name one")
    if a.threads:
        torch.set_num_threads(a.threads)
    register_onnx_schema()
    report: list[str] = []
    t0 = time.time()
    if a.output or a.scan_twin or a.golden:
        model = build(a.variant, a.seed, a.checkpoint, a.size)
        n_params = count_parameters(model)
        report.append(f"model: variant {a.variant}, S={a.size}, parameters {n_params:,}")
        if a.output or a.scan_twin:
            main_model = export_model(model, a.size, a.scan_op_version)
            n_scan = {
                op: count_ops(main_model, op, ONNX_DOMAIN) for op in (ONNX_OP_TYPE, ONNX_OP_TYPE_2D)
            }
            report.append(
                f"contract version {a.scan_op_version}: "
                + ", ".join(f"{n} {op} nodes" for op, n in n_scan.items() if n)
            )
            if a.output:
                if a.confidence is not None:
                    set_confidence(main_model, a.confidence)
                    report.append(f"its own confidence: {a.confidence:g}")
                size = check_and_save(main_model, a.output)
                report.append(f"{a.output}: {_mb(size)}")
            if a.scan_twin:
                twin = make_scan_twin(main_model)
                size = check_and_save(twin, a.scan_twin)
                report.append(f"{a.scan_twin}: {_mb(size)} ({count_ops(twin, 'Scan')} Scan nodes)")
        if a.golden:
            golden = write_golden(model, a.size, a.golden_image, a.golden, conf=a.golden_conf)
            total = sum(p.stat().st_size for p in Path(a.golden).iterdir())
            report.append(
                f"golden: {len(golden['detections'])} detections at conf {golden['conf']}, "
                f"{a.golden}: {_mb(total)}"
            )
            if a.scan_twin:
                x = np.load(Path(a.golden) / "input.npy")
                got = run_onnxruntime(twin, {"images": x})
                err = max(
                    float(np.abs(g - np.load(Path(a.golden) / f"level{i}.npy")).max())
                    for i, g in enumerate(got)
                )
                report.append(f"twin (onnxruntime) vs golden levels: max abs diff {err:.2e}")
    if a.block:
        sizes = write_block(a.block, a.seed)
        total = sum(p.stat().st_size for p in Path(a.block).iterdir())
        report.append(f"block: {sizes}, {a.block}: {total / 1e3:.1f} kB")
    report.append(f"done in {time.time() - t0:.1f} s")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
