"""A training checkpoint from a shipped ONNX model: the weights of ``models/*.onnx`` back
in the PyTorch model, so training can continue from the released weights on a machine
that has no ``runs/`` of earlier sessions.

    python -m fer_edge_training.from_onnx --onnx ../models/fer-yolo-mamba-nano.onnx \\
        --out ../runs/shipped.pt --golden ../tests/data/golden

The exporter folds every BatchNorm into the convolution before it and transposes or
reshapes a few tensors (linear layers, the dt biases). Which ONNX initializer holds which
PyTorch tensor is found by exporting a fresh model of the same variant, whose tensors all
hold distinct random values and whose BatchNorms only add their bias, and matching
values (:func:`tensor_sources`). Each folded convolution comes back with its BatchNorm
set so that eval mode computes exactly the folded convolution, and the BatchNorm's
statistics are then re-estimated on ``--frames`` images (weight and bias rescaled to
match), so that training mode, which normalises with batch statistics, starts from the
same function too.

``--golden`` checks the result against the golden outputs the exporter wrote for the
shipped model (``tests/data/golden``): the largest difference is printed and must be
below 1e-3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .export import DEFAULT_SCAN_OP_VERSION, export_model
from .model import FerYoloMamba, build_model
from .onnx_graph import scan_op_version

#: Relative tolerance of the golden check.
GOLDEN_TOLERANCE = 1e-3


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _identity_norms(model: nn.Module) -> None:
    """BatchNorms whose scale is exactly 1 (their bias stays as it is)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)


def _fresh_export(
    variant: str, size: int, version: int = DEFAULT_SCAN_OP_VERSION
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A ``variant`` model whose tensors hold distinct random values and whose BatchNorms
    only add their bias (so folding leaves each convolution's weight as it is and makes
    its bias the BatchNorm's), exported in ONNX contract ``version``, and its state
    dict."""
    torch.manual_seed(0)
    fresh = build_model(variant)
    with torch.no_grad():
        for p in fresh.parameters():
            p.copy_(torch.randn_like(p))
    _identity_norms(fresh)
    state = {k: v.detach().numpy() for k, v in fresh.state_dict().items()}
    return export_model(fresh.eval(), size, version), state


def tensor_sources(
    variant: str, size: int, version: int = DEFAULT_SCAN_OP_VERSION
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """The fresh export of :func:`_fresh_export` and, for each of its initializers, the
    state-dict key it holds and how (``same``, ``t``: transposed, ``reshape``), found by
    name or by value."""
    model, state = _fresh_export(variant, size, version)
    by_first_value: dict[float, list[str]] = {}
    for key, value in state.items():
        if value.dtype == np.float32 and value.size > 0:
            by_first_value.setdefault(float(value.flat[0]), []).append(key)
    sources = {}
    for name, init in _initializers(model).items():
        if name in state:  # kept under its own name (folded weights: equal up to rounding)
            sources[name] = (name, "reshape")
            continue
        if init.dtype != np.float32 or init.size == 0:
            continue
        for how, view in (("same", init), ("t", init.T if init.ndim == 2 else None)):
            if view is None:
                continue
            for key in by_first_value.get(float(view.flat[0]), []):
                src = state[key]
                if src.shape == view.shape and np.array_equal(src, view):
                    sources[name] = (key, how)
                elif src.size == view.size and np.array_equal(src.reshape(-1), view.reshape(-1)):
                    sources[name] = (key, "reshape")
    return model, sources


def load_onnx_weights(path: Path, variant: str, size: int) -> FerYoloMamba:
    """The model of ``variant`` with the weights of the ONNX file at ``path``; its
    BatchNorms have scale 1 after the folded convolutions (eval mode exact).

    The fresh export is written in the file's ONNX contract version (its ``fer_edge``
    opset_import: 1, 2 or 3; in version 3 the dt projection's weight is an input of the
    SelectiveScan2D node), so that it and the file have the same nodes in the same order;
    each initializer input of a fresh node names, through :func:`tensor_sources`, the
    tensor that the same input of the file's node holds (the exporter may have merged
    equal tensors, so names alone would not do)."""
    shipped_model = onnx.load(str(path))
    shipped = _initializers(shipped_model)
    version = scan_op_version(shipped_model) or DEFAULT_SCAN_OP_VERSION
    fresh_model, sources = tensor_sources(variant, size, version)
    fresh_nodes, shipped_nodes = fresh_model.graph.node, shipped_model.graph.node
    if [n.op_type for n in fresh_nodes] != [n.op_type for n in shipped_nodes]:
        raise ValueError(f"{path}: not the graph of a {variant} model at {size}x{size}")
    model = build_model(variant)
    _identity_norms(model)
    state = model.state_dict()
    loaded = set()
    for fresh_node, shipped_node in zip(fresh_nodes, shipped_nodes, strict=True):
        for fresh_name, shipped_name in zip(fresh_node.input, shipped_node.input, strict=True):
            if fresh_name not in sources or shipped_name not in shipped:
                continue
            key, how = sources[fresh_name]
            value = shipped[shipped_name]
            value = value.T if how == "t" else value
            state[key] = torch.from_numpy(value.copy()).reshape(state[key].shape)
            loaded.add(key)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    loaded.update(f"{n}.{k}" for n in norms for k in ("weight", "running_mean", "running_var"))
    unset = [k for k, v in state.items() if k not in loaded and v.is_floating_point()]
    if unset:
        raise ValueError(f"{path}: no ONNX tensor for {unset[:5]}")
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def reestimate_norms(model: nn.Module, images: torch.Tensor) -> None:
    """Sets each BatchNorm's statistics to those of its input on ``images`` and rescales
    its weight and bias so that eval mode computes the same function as before (see the
    module docstring). The model must be in eval mode with exact BatchNorms."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = {}

    def hook(module, inputs, _output):
        x = inputs[0].double()
        stats[module] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    handles = [m.register_forward_hook(hook) for m in norms]
    model.eval()(images)
    for h in handles:
        h.remove()
    for m in norms:
        mean, var = stats[m]
        old_scale = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
        old_shift = m.bias.double() - m.running_mean.double() * old_scale
        new_std = torch.sqrt(var + m.eps)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.weight.copy_(old_scale * new_std)
        m.bias.copy_(old_shift + mean * old_scale)


def check_golden(model: nn.Module, golden: Path) -> float:
    """Largest difference of the model's outputs from ``golden``'s, relative to their
    largest magnitude."""
    x = torch.from_numpy(np.load(golden / "input.npy"))
    with torch.no_grad():
        levels = model.eval()(x)
    worst = 0.0
    for i, level in enumerate(levels):
        want = np.load(golden / f"level{i}.npy")
        worst = max(worst, float(np.abs(level.numpy() - want).max() / np.abs(want).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write ({'ema': ...})")
    ap.add_argument("--variant", default="nano")
    ap.add_argument("--size", type=int, default=224, help="the ONNX model's input size")
    ap.add_argument("--golden", type=Path, help="golden outputs of this ONNX model")
    ap.add_argument(
        "--frames", type=Path, nargs="*", default=[], help="images for the BatchNorm statistics"
    )
    args = ap.parse_args(argv)
    from .preprocess import preprocess

    model = load_onnx_weights(args.onnx, args.variant, args.size)
    if args.golden:
        print(f"loaded: golden difference {check_golden(model, args.golden):.2e}", file=sys.stderr)
    if args.frames:
        from PIL import Image

        batch = []
        for p in args.frames:
            with Image.open(p) as im:
                x, _ = preprocess(np.asarray(im.convert("RGB")), args.size)
                batch.append(torch.from_numpy(x))
        reestimate_norms(model, torch.cat(batch))
    if args.golden:
        worst = check_golden(model, args.golden)
        print(f"golden difference {worst:.2e}", file=sys.stderr)
        if worst > GOLDEN_TOLERANCE:
            print(f"error: above {GOLDEN_TOLERANCE}", file=sys.stderr)
            return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": model.state_dict(), "source": str(args.onnx)}, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
