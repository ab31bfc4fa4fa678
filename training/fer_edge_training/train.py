"""Train FER-YOLO-Mamba on frames made of real photos (see :mod:`fer_edge_training.mosaic`).

    python -m fer_edge_training.train --data ../../shared/data/facial_expressions \\
        --lfw ../../shared/data/lfw --ferplus ../../shared/data/ferplus --out runs/v2

What it does:

* reads LFW's whole photos with every face boxed and the centre face labelled by
  ``facial_expressions``' legend, split by the identities of ``data/splits``
  (:func:`~fer_edge_training.photos.lfw_photos`), and FER+'s faces with their vote
  distributions, split as FER+ splits them (:mod:`fer_edge_training.ferplus`);
* with ``--teacher`` (:mod:`fer_edge_training.teacher`), trains the LFW faces' expression
  on ``(1 - soft) * one-hot + soft * teacher`` instead of the one-hot label (``--soft``);
* draws each batch of frames afresh from the training photos (class-balanced sampling,
  ``--balance``), seeded by the iteration, so a resumed run sees the same frames it would
  have seen without the interruption;
* with ``--close-up-batch N``, adds to every step N close-ups (one FER+ face filling the
  frame) at the small ``--close-up-sizes``: expression examples at a third of the cost of
  a full frame each, at the face sizes a kiosk camera delivers (a face of 96-160 px);
  ``--close-up-grids`` packs n x n of them into a frame instead (n drawn per step), the
  step's faces in about 1/n^2 of the pixels;
* with ``--backgrounds DIR`` (:mod:`fer_edge_training.backgrounds`), covers
  ``--background-tiles`` of the mosaic cells with face-free photos (textures, plants,
  objects: what a detector trained on faces alone boxes as faces);
* with ``--anchor-objectness W`` (and ``--init`` or ``--anchor-model``), adds W times the
  divergence of every cell's objectness from the ``--init`` model's on the same frames: the
  features can train for expressions while where the detector finds faces stays put;
  ``--anchor-model`` anchors to another model's objectness instead (an earlier model that
  detected better);
* AdamW, linear warm-up then cosine decay, an exponential moving average (EMA) of the
  weights, which is what gets evaluated and exported;
* every ``--eval-every`` iterations: mAP@0.5 and expression accuracy of the EMA model on
  a fixed set of frames composed from the validation identities, a line in
  ``<out>/metrics.jsonl``, and ``<out>/best.pt`` when the mAP improved;
* ``<out>/last.pt`` every ``--checkpoint-every`` iterations and on Ctrl-C or SIGTERM (written to a
  temporary file, then renamed: an interrupted write never spoils the checkpoint);
  ``--resume`` continues from it;
* a progress bar with the loss and the ETA; uses CUDA when present, else the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .backgrounds import background_photos
from .decode import decode
from .evaluate import Report, evaluate
from .ferplus import read_ferplus
from .loss import flatten_levels, yolox_loss
from .model import CLASSES, build_model, param_groups
from .mosaic import KINDS, MAX_ROLL, Sources, compose_frame, labels_of
from .photos import add_source_arguments, ferplus_photos, lfw_photos
from .preprocess import MEAN, STD
from .scan import set_scan_impl
from .teacher import read_teacher

#: Prior probability of a face (and of a class) in a cell at initialisation (YOLOX/RetinaNet).
PRIOR = 0.01


def to_input(images: np.ndarray) -> torch.Tensor:
    """``uint8 [B, S, S, 3]`` -> normalised ``float32 [B, 3, S, S]`` (as the runtime does)."""
    x = torch.from_numpy(images).float().div_(255.0)
    x = (x - torch.from_numpy(MEAN)) / torch.from_numpy(STD)
    return x.permute(0, 3, 1, 2).contiguous()


def compose_batch(sources: Sources, size: int, rng, count: int, close_up_grid: int = 1):
    frames = [compose_frame(sources, size, rng, close_up_grid=close_up_grid) for _ in range(count)]
    images = np.stack([f[0] for f in frames])
    targets = [(torch.from_numpy(b), torch.from_numpy(t)) for _, b, t in frames]
    return images, targets


def validation_frames(sources: Sources, size: int, count: int, seed: int):
    """``count`` fixed frames of the validation photos, as ``(image, boxes, labels)`` with
    the labelled faces only (the expression AP needs a class for every face)."""
    rng = np.random.default_rng([seed, 1])
    frames = []
    for _ in range(count):
        image, boxes, targets = compose_frame(sources, size, rng)
        labels = labels_of(targets)
        frames.append((image, boxes[labels >= 0], labels[labels >= 0]))
    return frames


def init_head_priors(model: nn.Module) -> None:
    """Objectness and class biases start at ``log(p / (1 - p))`` with p = :data:`PRIOR`,
    so the first steps are not swamped by the loss of thousands of empty cells."""
    bias = -math.log((1 - PRIOR) / PRIOR)
    for preds in (model.head.obj_preds, model.head.cls_preds):
        for conv in preds:
            nn.init.constant_(conv.bias, bias)


class Ema:
    """Exponential moving average of a model's weights. The decay ramps up like YOLOX's,
    ``decay * (1 - exp(-updates / ramp))``: with YOLOX's ramp of 2,000 updates the average
    spans only a few steps for the first thousand, so short fine-tuning runs want a
    shorter ramp (``--ema-ramp``)."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def detect_batch(model: nn.Module, images: np.ndarray, size: int, device, conf: float):
    levels = model(to_input(images).to(device))
    levels = [lv.float().cpu().numpy() for lv in levels]
    out = []
    for i in range(len(images)):
        dets = decode([lv[i : i + 1] for lv in levels], size, conf=conf)
        boxes = np.array([d["box"] for d in dets], np.float32).reshape(-1, 4)
        scores = np.array([d["score"] for d in dets], np.float32)
        labels = np.array([d["label"] for d in dets], np.int64)
        out.append((boxes, scores, labels))
    return out


def validate(model, frames, size, device, batch: int = 16, conf: float = 0.01) -> Report:
    detections = []
    for i in range(0, len(frames), batch):
        chunk = frames[i : i + batch]
        detections += detect_batch(model, np.stack([f[0] for f in chunk]), size, device, conf)
    return evaluate(detections, [(f[1], f[2]) for f in frames], len(CLASSES))


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def report_line(report: Report) -> str:
    ap = " ".join(
        f"{name[:4]} {'-' if a is None else f'{a:.3f}'}"
        for name, a in zip(CLASSES, report.ap, strict=False)
    )
    return f"mAP50 {report.map50:.4f} acc {report.accuracy:.4f} recall {report.recall:.4f} | {ap}"


def objectness_anchor(levels: list[torch.Tensor], anchor_levels: list[torch.Tensor], size: int):
    """How far the objectness of ``levels`` has moved from that of ``anchor_levels`` (the
    ``--anchor-objectness`` model on the same frames): binary cross-entropy against the
    anchor's probabilities less their own entropy, summed over every cell, per frame. It
    holds where the detector finds faces while the features under it train."""
    logits = flatten_levels(levels, size)[0][..., 4]
    anchor = flatten_levels(anchor_levels, size)[0][..., 4]
    target = anchor.sigmoid()
    bce = nn.functional.binary_cross_entropy_with_logits
    loss = bce(logits, target, reduction="sum") - bce(anchor, target, reduction="sum")
    return loss / logits.shape[0]


def freeze(model: nn.Module, prefixes: list[str]) -> list[nn.Module]:
    """Stops training the modules whose names start with one of ``prefixes``; returns them."""
    frozen = [m for name, m in model.named_modules() if name.startswith(tuple(prefixes))]
    if prefixes and not frozen:
        raise SystemExit(f"--freeze {' '.join(prefixes)}: no module of the model has that name")
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """Training mode, except for frozen modules, whose norms keep their statistics."""
    model.train()
    for module in frozen:
        module.eval()


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(ap)
    ap.add_argument("--out", type=Path, required=True, help="run directory")
    ap.add_argument("--variant", default="nano")
    ap.add_argument("--size", type=int, default=224, help="input size of validation and export")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        help="multi-scale training: each batch at one of these sizes (default: --size)",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-frames", type=int, default=192)
    ap.add_argument("--checkpoint-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--scan", default="native", help="training scan: native, fast or ref")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    ap.add_argument(
        "--init",
        type=Path,
        help="start from this checkpoint's EMA weights with a fresh schedule (fine-tuning)",
    )
    ap.add_argument(
        "--balance",
        type=float,
        default=0.5,
        help="class-balanced sampling power: 0 = data frequencies, 1 = every class equally",
    )
    ap.add_argument(
        "--close-ups",
        type=float,
        default=dict(KINDS)["close_up"],
        help="share of training frames that are one FER+ face filling the frame",
    )
    ap.add_argument(
        "--roll",
        type=float,
        default=0.0,
        help=f"share of training photos turned by up to {MAX_ROLL:g} degrees (tilted heads); "
        "validation frames are never turned",
    )
    ap.add_argument(
        "--backgrounds",
        type=Path,
        help="folder of face-free photos for mosaic cells (fer_edge_training.backgrounds)",
    )
    ap.add_argument(
        "--background-tiles",
        type=float,
        default=0.1,
        help="with --backgrounds: share of the training mosaics' cells they cover",
    )
    ap.add_argument(
        "--close-up-batch",
        type=int,
        default=0,
        help="close-ups added to every step, beside the --batch frames (0: none)",
    )
    ap.add_argument(
        "--close-up-sizes",
        type=int,
        nargs="+",
        default=[96, 128, 160],
        help="input sizes of the --close-up-batch frames (one per step, drawn at random)",
    )
    ap.add_argument(
        "--close-up-grids",
        type=int,
        nargs="+",
        default=[1],
        help="faces a side of the --close-up-batch frames (one per step, drawn at random): "
        "with n, a step holds --close-up-batch / n^2 frames of n x n faces at 1/n the size, "
        "the same faces for about 1/n^2 of the pixels",
    )
    ap.add_argument(
        "--close-up-weight",
        type=float,
        default=1.0,
        help="weight of the --close-up-batch loss beside the --batch frames' loss",
    )
    ap.add_argument(
        "--cls-weight", type=float, default=1.0, help="weight of the expression loss term"
    )
    ap.add_argument(
        "--ema-ramp",
        type=float,
        default=2000,
        help="updates over which the EMA decay ramps up (YOLOX: 2000; less for fine-tuning)",
    )
    ap.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="PREFIX",
        help="modules kept as they are, norm statistics included (e.g. head.reg_ head.obj_)",
    )
    ap.add_argument(
        "--stop-at",
        type=int,
        help="stop (and checkpoint) after this iteration, keeping the --iters schedule",
    )
    ap.add_argument(
        "--teacher", type=Path, help="teacher probabilities CSV (fer_edge_training.teacher)"
    )
    ap.add_argument(
        "--soft",
        type=float,
        default=0.5,
        help="with --teacher: share of the teacher in LFW faces' targets (0 = hard labels)",
    )
    ap.add_argument(
        "--anchor-objectness",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="with --init or --anchor-model: weight of a loss keeping the frames' objectness "
        "at the --init model's, or --anchor-model's (0 = none)",
    )
    ap.add_argument(
        "--anchor-model",
        type=Path,
        help="with --anchor-objectness: the checkpoint whose objectness it keeps, if not "
        "--init's (say, an earlier model whose detection was better)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    teacher = read_teacher(args.teacher) if args.teacher else None
    lfw = lfw_photos(args.lfw, args.data, args.lfw_boxes, args.splits, teacher, args.soft)
    ferplus, dropped = read_ferplus(args.ferplus)
    train = Sources(
        lfw["train"],
        ferplus_photos(ferplus["train"]),
        power=args.balance,
        close_ups=args.close_ups,
        roll=args.roll,
        backgrounds=background_photos(args.backgrounds) if args.backgrounds else [],
        background_tiles=args.background_tiles if args.backgrounds else 0.0,
    )
    close_ups = Sources(train.lfw, train.ferplus, args.balance, close_ups=1.0, roll=args.roll)
    val = Sources(lfw["val"], ferplus_photos(ferplus["val"]), power=0.0)
    if train.backgrounds:
        print(
            f"{len(train.backgrounds)} face-free photos in {args.background_tiles:g} of the "
            f"mosaic cells ({args.backgrounds})",
            file=sys.stderr,
        )
    for name, photos in (("LFW", train.lfw), ("FER+", train.ferplus)):
        counts = np.bincount([p.label for p in photos if p.label >= 0], minlength=len(CLASSES))
        print(
            f"{name}: {len(photos)} training photos, labelled faces "
            f"{dict(zip(CLASSES, counts.tolist(), strict=False))}",
            file=sys.stderr,
        )
    print(
        f"FER+ dropped {dict(dropped)}; teacher {args.teacher} (soft {args.soft}); "
        f"device {device}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    val_frames = validation_frames(val, args.size, args.val_frames, args.seed)

    torch.manual_seed(args.seed)
    model = build_model(args.variant).to(device)
    init_head_priors(model)
    if args.scan in ("native", "fast", "ref"):
        set_scan_impl(model, args.scan)
    frozen = freeze(model, args.freeze)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    ema = Ema(model, ramp=args.ema_ramp)
    start, best = 0, -1.0
    last = args.out / "last.pt"
    if args.init and not (args.resume and last.exists()):
        weights_from = torch.load(args.init, map_location=device, weights_only=True)["ema"]
        model.load_state_dict(weights_from)
        ema.model.load_state_dict(weights_from)
        print(f"initialised from the EMA weights in {args.init}", file=sys.stderr)
    anchor = None
    if args.anchor_objectness:
        anchor_from = args.anchor_model or args.init
        if not anchor_from:
            raise SystemExit(
                "--anchor-objectness needs --init or --anchor-model: the objectness it keeps"
            )
        anchor = build_model(args.variant).to(device)
        anchor.load_state_dict(
            torch.load(anchor_from, map_location=device, weights_only=True)["ema"]
        )
        anchor.eval().requires_grad_(False)
        set_scan_impl(anchor, "fast" if args.scan == "ref" else args.scan)
    if args.resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["iteration"]), float(state["best"])
        print(f"resumed from {last} at iteration {start}, best mAP50 {best:.4f}", file=sys.stderr)
    set_scan_impl(ema.model, "fast" if args.scan == "ref" else args.scan)

    def checkpoint(iteration: int) -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "ema": ema.model.state_dict(),
                "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "best": best,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            last,
        )

    # `kill` / systemd stop (SIGTERM) checkpoints like Ctrl-C; background jobs started
    # from a script ignore SIGINT, so SIGTERM is how they are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    metrics = open(args.out / "metrics.jsonl", "a", encoding="utf-8")
    end = min(args.iters, args.stop_at or args.iters)
    bar = tqdm(range(start, end), initial=start, total=args.iters, dynamic_ncols=True)
    it = start
    try:
        train_mode(model, frozen)
        window = []
        for it in bar:
            lr = learning_rate(it, args.iters, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([args.seed, 0, it])
            size = int(rng.choice(args.sizes)) if args.sizes else args.size
            images, targets = compose_batch(train, size, rng, args.batch)
            targets = [(b.to(device), lab.to(device)) for b, lab in targets]
            x = to_input(images).to(device)
            levels = model(x)
            loss, parts = yolox_loss(levels, targets, size, args.cls_weight)
            if anchor is not None:
                with torch.no_grad():
                    anchor_levels = anchor(x)
                kept = objectness_anchor(levels, anchor_levels, size)
                loss = loss + args.anchor_objectness * kept
                parts["anchor"] = float(kept.detach())
            if args.close_up_batch:
                rng = np.random.default_rng([args.seed, 2, it])
                size = int(rng.choice(args.close_up_sizes))
                # (a single grid draws nothing, so runs from before grids resume alike)
                grid = args.close_up_grids[0]
                if len(args.close_up_grids) > 1:
                    grid = int(rng.choice(args.close_up_grids))
                count = max(1, args.close_up_batch // grid**2)
                images, targets = compose_batch(close_ups, size, rng, count, grid)
                targets = [(b.to(device), lab.to(device)) for b, lab in targets]
                close_loss, close_parts = yolox_loss(
                    model(to_input(images).to(device)), targets, size, args.cls_weight
                )
                loss = loss + args.close_up_weight * close_loss
                parts["cls"] = (parts["cls"] + close_parts["cls"]) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            ema.update(model)
            window = (window + [float(loss.detach())])[-20:]
            bar.set_postfix(
                loss=f"{np.mean(window):.3f}",
                box=f"{parts['box']:.3f}",
                cls=f"{parts['cls']:.3f}",
                **({"anchor": f"{parts['anchor']:.2f}"} if "anchor" in parts else {}),
                lr=f"{lr:.1e}",
            )
            done = it + 1
            if done % args.checkpoint_every == 0:
                checkpoint(done)
            if done % args.eval_every == 0 or done == args.iters:
                t0 = time.monotonic()
                report = validate(ema.model, val_frames, args.size, device)
                line = {
                    "iteration": done,
                    "time": time.time(),
                    "loss": float(np.mean(window)),
                    "lr": lr,
                    "map50": report.map50,
                    "accuracy": report.accuracy,
                    "recall": report.recall,
                    "ap": dict(zip(CLASSES, report.ap, strict=False)),
                    "eval_seconds": time.monotonic() - t0,
                }
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                tqdm.write(f"iteration {done}: {report_line(report)}")
                if report.map50 > best:
                    best = report.map50
                    save_atomic(
                        {"ema": ema.model.state_dict(), "iteration": done}, args.out / "best.pt"
                    )
                checkpoint(done)
                train_mode(model, frozen)
    except KeyboardInterrupt:
        checkpoint(it)
        print(f"\ninterrupted: checkpoint at iteration {it} in {last}", file=sys.stderr)
        return 130
    finally:
        metrics.close()
    if end < args.iters:
        checkpoint(end)
        print(f"stopped at iteration {end} (--stop-at); --resume continues", file=sys.stderr)
    print(
        f"done: best validation mAP50 {best:.4f}; weights in {args.out / 'best.pt'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
