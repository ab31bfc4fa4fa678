"""A compact MTCNN face detector (P-Net -> R-Net -> O-Net cascade) in plain torch.

The network layouts and the pretrained weights are those of facenet-pytorch 2.6.0 (MIT
licence, Copyright (c) 2019 Timothy Esler); the weights and the licence are vendored in
``training/third_party/mtcnn/`` and loaded from there only. The detection procedure follows
Zhang et al. 2016 ("Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks") as implemented there, with two deliberate differences:

* candidate crops that run past the image border are zero-padded (as in the original
  MTCNN release) instead of being clamped to the border, which matters for tight crops
  where the face fills the frame;
* NMS is a small numpy routine here, so torchvision is not needed.

API: :func:`detect_faces` on an ``HxWx3`` (or ``HxW`` grey) uint8 array returns a list of
``(x1, y1, x2, y2, score)`` in pixel coordinates of the input, best first. Boxes are not
clipped to the image.

CLI: ``python -m fer_edge_training.mtcnn --root DIR --out CSV`` runs over
``DIR/images/*.jpg`` (a ``muxspace/facial_expressions`` clone layout; ``--pattern`` for
others, e.g. ``*/*.jpg`` for LFW's ``images/<Name>/``) and writes one row per image:
``image,x1,y1,x2,y2,score,faces,width,height`` (the best face, box clipped to the image;
empty box fields and ``faces=0`` when nothing is found; ``image`` is the path below
``images/``). With ``--all-faces`` every face found gets a row of its own, best first.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "third_party" / "mtcnn"

Box = tuple[float, float, float, float, float]


# --------------------------------------------------------------------------- networks


class PNet(nn.Module):
    """Fully convolutional proposal net: 12x12 window, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        # The weights come from a (W, H, C)-ordered flatten (Caffe/TF heritage).
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops (the landmark head is loaded but unused here)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1)


_NETS: tuple[PNet, RNet, ONet] | None = None


def load_nets() -> tuple[PNet, RNet, ONet]:
    """The three nets with the vendored weights, in eval mode (cached)."""
    global _NETS
    if _NETS is None:
        nets = []
        for cls, name in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet")):
            net = cls()
            state = torch.load(WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            nets.append(net.eval())
        _NETS = (nets[0], nets[1], nets[2])
    return _NETS


# --------------------------------------------------------------------------- box helpers


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression.

    ``boxes`` is ``[N, 4]`` (x1, y1, x2, y2, inclusive pixel coordinates, so a box covers
    ``x2 - x1 + 1`` pixels), ``scores`` is ``[N]``. A box is dropped when its overlap with a
    kept, higher-scoring box is above ``threshold``; overlap is IoU (``mode="union"``) or
    intersection over the smaller area (``mode="min"``). Returns kept indices, best first.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode {mode!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow boxes ([N, >=4]) to squares around the same centre (side = longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * (w - side)
    out[:, 1] = boxes[:, 1] + 0.5 * (h - side)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _calibrate(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Apply the nets' box regression (offsets in units of box width/height)."""
    out = boxes.copy()
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(img: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Cut ``boxes`` out of ``img`` ([3, H, W] float), zero-padding outside the image, and
    resize each to ``size x size`` (area interpolation). Returns the normalised batch and the
    indices of the boxes that were usable (non-empty)."""
    _, h, w = img.shape
    out, used = [], []
    for k, (bx1, by1, bx2, by2) in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        bw, bh = bx2 - bx1 + 1, by2 - by1 + 1
        if bw < 2 or bh < 2:
            continue
        sx1, sy1 = max(bx1, 0), max(by1, 0)
        sx2, sy2 = min(bx2 + 1, w), min(by2 + 1, h)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        patch = torch.zeros(3, bh, bw)
        patch[:, sy1 - by1 : sy2 - by1, sx1 - bx1 : sx2 - bx1] = img[:, sy1:sy2, sx1:sx2]
        out.append(F.interpolate(patch[None], size=(size, size), mode="area"))
        used.append(k)
    if not out:
        return torch.zeros(0, 3, size, size), np.zeros(0, dtype=np.int64)
    batch = (torch.cat(out) - 127.5) * 0.0078125
    return batch, np.asarray(used, dtype=np.int64)


# --------------------------------------------------------------------------- detection


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


@torch.inference_mode()
def detect_faces(
    rgb: np.ndarray,
    min_face_size: float = 20.0,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
) -> list[Box]:
    """Faces in a uint8 ``HxWx3`` RGB image (grey ``HxW``/``HxWx1`` is replicated to 3
    channels). Returns ``[(x1, y1, x2, y2, score), ...]``, highest score first."""
    pnet, rnet, onet = load_nets()
    arr = _to_rgb(rgb)
    h, w = arr.shape[:2]
    img = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1)

    # Stage 1: P-Net over an image pyramid (scale s maps min_face_size to 12 px).
    scale = 12.0 / min_face_size
    min_side = min(h, w) * scale
    found = []
    while min_side >= 12:
        size = (int(h * scale + 1), int(w * scale + 1))
        x = (F.interpolate(img[None], size=size, mode="area") - 127.5) * 0.0078125
        reg, prob = pnet(x)
        prob = prob[0, 1].numpy()
        ys, xs = np.nonzero(prob >= thresholds[0])
        if len(ys):
            q1 = np.floor((2.0 * np.stack([xs, ys], 1) + 1) / scale)
            q2 = np.floor((2.0 * np.stack([xs, ys], 1) + 12) / scale)
            cand = np.concatenate(
                [q1, q2, prob[ys, xs][:, None], reg[0][:, ys, xs].numpy().T], axis=1
            )
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        scale *= factor
        min_side *= factor
    if not found:
        return []
    boxes = np.concatenate(found)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    boxes = _square(_calibrate(boxes, boxes[:, 5:9], plus_one=False)[:, :5])

    # Stage 2: R-Net on 24x24 crops.
    batch, used = _crops(img, boxes, 24)
    if len(used) == 0:
        return []
    reg, prob = rnet(batch)
    score = prob[:, 1].numpy()
    ok = score > thresholds[1]
    boxes = boxes[used][ok]
    boxes[:, 4] = score[ok]
    reg = reg.numpy()[ok]
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(_calibrate(boxes[keep], reg[keep]))
    if len(boxes) == 0:
        return []

    # Stage 3: O-Net on 48x48 crops.
    batch, used = _crops(img, boxes, 48)
    if len(used) == 0:
        return []
    reg, prob = onet(batch)
    score = prob[:, 1].numpy()
    ok = score > thresholds[2]
    boxes = boxes[used][ok]
    boxes[:, 4] = score[ok]
    boxes = _calibrate(boxes, reg.numpy()[ok])
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")]
    return [tuple(float(v) for v in b[:5]) for b in boxes]  # type: ignore[misc]


# --------------------------------------------------------------------------- CLI


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def run(
    root: Path,
    out: Path,
    limit: int | None = None,
    every: int = 500,
    pattern: str = "*.jpg",
    all_faces: bool = False,
) -> dict[str, float]:
    """Detect faces in ``root/images/<pattern>`` (sorted) and write the CSV atomically:
    the best face of each image, or with ``all_faces`` a row for every face."""
    paths = sorted((root / "images").glob(pattern))
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise SystemExit(f"no images in {root / 'images'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    n_face, score_sum, t0 = 0, 0.0, time.monotonic()
    try:
        with os.fdopen(fd, "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(["image", "x1", "y1", "x2", "y2", "score", "faces", "width", "height"])
            for i, path in enumerate(paths, 1):
                rgb = _load_rgb(path)
                faces = detect_faces(rgb)
                hh, ww = rgb.shape[:2]
                name = path.relative_to(root / "images").as_posix()
                for x1, y1, x2, y2, s in faces if all_faces else faces[:1]:
                    box = [min(max(x1, 0.0), ww), min(max(y1, 0.0), hh)]
                    box += [min(max(x2, 0.0), ww), min(max(y2, 0.0), hh)]
                    wr.writerow([name, *map(_fmt, box), f"{s:.4f}", len(faces), ww, hh])
                if faces:
                    n_face += 1
                    score_sum += faces[0][4]
                else:
                    wr.writerow([name, "", "", "", "", "", 0, ww, hh])
                if i % every == 0 or i == len(paths):
                    dt = time.monotonic() - t0
                    rate = i / dt if dt > 0 else float("inf")
                    eta = (len(paths) - i) / rate if rate > 0 else 0.0
                    print(
                        f"{i}/{len(paths)} images, {rate:.1f} img/s, ETA {eta:.0f} s, "
                        f"faces so far {n_face}",
                        file=sys.stderr,
                        flush=True,
                    )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    elapsed = time.monotonic() - t0
    stats = {
        "images": float(len(paths)),
        "with_face": float(n_face),
        "no_face": float(len(paths) - n_face),
        "mean_score": score_sum / n_face if n_face else float("nan"),
        "seconds": elapsed,
    }
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="folder holding images/")
    ap.add_argument("--out", type=Path, required=True, help="CSV to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--pattern", default="*.jpg", help="images below ROOT/images/ (glob)")
    ap.add_argument("--all-faces", action="store_true", help="a row for every face found")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stats = run(
        args.root, args.out, limit=args.limit, pattern=args.pattern, all_faces=args.all_faces
    )
    print(
        f"wrote {args.out}: {stats['with_face']:.0f}/{stats['images']:.0f} images with a face "
        f"({stats['no_face']:.0f} without), mean score {stats['mean_score']:.4f}, "
        f"{stats['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
