"""A wider variant's weights that compute what a trained narrower model computes.

    python -m fer_edge_training.widen --checkpoint candidates/v19-roll-backgrounds-fp16.pt \\
        --variant s --out ../runs/s-from-v19.pt

``train --variant s --init ../runs/s-from-v19.pt`` then trains the wider network from
the narrower one's answers instead of from scratch (Net2Net's widening, Chen et al. 2016).
The variants share their depth and differ in width by a factor of two (``nano`` 0.25 ->
``s`` 0.50), so every channel axis that doubles is widened by duplication:

* output channels: channel ``i`` of the narrow model becomes channels ``2i`` and
  ``2i + 1`` (interleaved, so a concatenation or split of widened tensors is the
  widening of the concatenation or split: the cross-stage concatenations, the SS2D
  ``in_proj`` split and the scan's ``[K * Di]`` rows need no layout of their own);
* input channels: each weight is copied to both copies of its input and halved, so the
  sum over the two equal copies is the narrow model's sum;
* per-channel statistics and parameters (batch and layer norms, biases, the scan's
  ``A``, ``D`` and dt bias) are copied to both copies. A layer norm over duplicated
  channels sees the same mean and variance.

Axes that keep their size (the 12 space-to-depth input channels, the 16 scan states,
the 7 expressions, 4 box and 1 objectness outputs, the 8 scan directions) are copied;
the one axis with both kinds, ``x_proj``'s rows ``[dt rank | B states | C states]``,
widens its dt-rank rows only. With ``noise`` 0 the wide model's outputs equal the narrow
model's to float rounding (``tests/test_widen.py``). Two exact copies get the same
gradients and stay copies: a first widening with 1% independent noise was still a nano
after 300 iterations (the copies' difference had not grown). So the default adds noise
of ``noise`` times each weight tensor's standard deviation to one copy of every widened
output channel of the convolutions and projections and subtracts it from the other:
the copies start 20% of a weight's spread apart, and the next layer, which adds them,
sees the narrow model's sum to first order (v19 widened at 0.2: validation mAP50 0.349,
accuracy 0.609 against the nano's 0.358, 0.615; at 0.3 0.338, 0.607).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from .export import build
from .model import SS2D, build_model

#: Relative standard deviation of the symmetry-breaking noise (see the module doc).
NOISE = 0.2


def _input_axes(model: nn.Module) -> dict[str, int]:
    """State-dict keys of the weights with an input-channel axis, and that axis."""
    axes = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            axes[f"{prefix}weight"] = 1
        elif isinstance(module, SS2D):
            axes[f"{prefix}x_proj_weight"] = 2
            axes[f"{prefix}dt_projs_weight"] = 2
    return axes


def _widen_axis(value: Tensor, axis: int, size: int, is_input: bool) -> Tensor:
    if size == value.shape[axis]:
        return value
    if size != 2 * value.shape[axis]:
        raise ValueError(f"axis {axis} of {tuple(value.shape)} cannot widen to {size}")
    wide = value.repeat_interleave(2, dim=axis)
    return wide / 2 if is_input else wide


def _split_noise(value: Tensor, axis: int, copied: int, generator) -> Tensor:
    """Unit Gaussian noise added to one copy of each output channel and subtracted from the
    other, so that their sum, all the next layer sees of them, is unchanged.

    ``axis`` is the output axis; its first ``copied`` rows are the pairs of copies, the
    rest have none and get no noise (``x_proj``'s state rows after its dt rows).
    """
    shape = list(value.shape)
    shape[axis] = copied // 2
    half = torch.randn(shape, generator=generator)
    signs = torch.tensor([1.0, -1.0]).repeat(copied // 2)
    noise = half.repeat_interleave(2, dim=axis) * signs.view([-1] + [1] * (len(shape) - 1 - axis))
    shape[axis] = value.shape[axis] - copied
    return torch.cat([noise, torch.zeros(shape)], dim=axis)


def widen_state(
    narrow: nn.Module, wide: nn.Module, noise: float = NOISE, seed: int = 0
) -> dict[str, Tensor]:
    """``wide``'s state dict computed from ``narrow``'s (see the module doc)."""
    narrow_state, wide_state = narrow.state_dict(), wide.state_dict()
    if narrow_state.keys() != wide_state.keys():
        raise ValueError("the two models do not have the same layers")
    inputs = _input_axes(wide)
    dt_ranks = {
        f"{name}.x_proj_weight": module.dt_rank
        for name, module in narrow.named_modules()
        if isinstance(module, SS2D)
    }
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in narrow_state.items():
        target, narrow_shape = wide_state[key].shape, value.shape
        value = value.float()
        if key in dt_ranks:
            # rows [dt rank | B | C]: the dt-rank rows widen, the 2N state rows do not
            rank = dt_ranks[key]
            dt_rows, state_rows = value.split([rank, value.shape[1] - rank], dim=1)
            value = torch.cat([dt_rows.repeat_interleave(2, dim=1), state_rows], dim=1)
        for axis, size in enumerate(target):
            value = _widen_axis(value, axis, size, inputs.get(key) == axis)
        if noise and key in inputs:
            axis = inputs[key] - 1  # the output axis: the one before the input axis
            copied = 2 * (target[axis] - narrow_shape[axis])  # rows that are pairs of copies
            if copied:
                value = value + _split_noise(value, axis, copied, generator) * (noise * value.std())
        out[key] = value.to(wide_state[key].dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="narrow model's weights")
    ap.add_argument("--from-variant", default="nano", help="the checkpoint's variant")
    ap.add_argument("--variant", default="s", help="the wider variant to write")
    ap.add_argument("--noise", type=float, default=NOISE, help="see the module doc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint for train --init")
    args = ap.parse_args(argv)
    narrow = build(args.from_variant, args.seed, str(args.checkpoint))
    wide = build_model(args.variant)
    widened = widen_state(narrow, wide, args.noise, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial")
    torch.save({"ema": widened}, partial)
    partial.replace(args.out)
    print(
        f"{args.out}: {args.variant} weights from {args.checkpoint} ({args.from_variant}), "
        f"noise {args.noise}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
