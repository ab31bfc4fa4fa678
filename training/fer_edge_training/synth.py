"""Detection training frames built from labelled face crops on real backgrounds.

The labelled images of ``facial_expressions`` are tight face crops, one face each. A kiosk
camera sees something else: faces at many sizes and positions, several at once, in colour,
on a scene. :func:`compose_frame` builds such frames:

* a real background photo (scikit-image's bundled public-domain / CC0 photos by default,
  or any folder of face-free photos), randomly cropped, scaled, flipped and re-lit;
* 1 to 6 face crops pasted at random scales (face width from 8% to 70% of the frame's
  short side) and positions, or, in :data:`CLOSE_UP_FRAMES` of the frames, one face close
  to the camera (60% to 100% of the short side: someone standing at the kiosk, and the
  framing of the tight crops users test with); each through a feathered elliptical mask
  around the face (so no crop leaves a hard rectangular edge the detector could learn
  instead of the face), placed so no pasted crop hides much of an earlier face;
* a camera-like aspect ratio (1:1, 4:3, 16:9 or a 3:4 portrait kiosk), letterboxed into the
  square network input exactly as the runtime does it (top-left, grey 128 padding);
* photometric jitter, and the whole frame turned grey for a share of frames (most source
  crops are grey, camera frames are colour: the model must handle colour frames with grey
  faces, colour faces and grey frames).

Boxes are the MTCNN face boxes of ``training/data/facial_expressions_boxes.csv``
(see :mod:`fer_edge_training.mtcnn`), mapped through every transform.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .data import FaceCrop
from .model import CLASSES
from .preprocess import PAD_VALUE

#: scikit-image sample photos with no person in them and a public-domain or CC0 licence
#: (see scikit-image's ``skimage/data/__init__.py`` docstrings).
SKIMAGE_BACKGROUNDS = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "coffee.png",
    "chelsea.png",
    "coins.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "moon.png",
    "page.png",
)

#: Expression classes.
NUM_CLASSES = len(CLASSES)
#: Frame aspect ratios (width / height) a kiosk camera delivers, with their frequency.
ASPECTS = ((4 / 3, 0.4), (16 / 9, 0.25), (1.0, 0.2), (3 / 4, 0.15))
#: How many faces a frame holds, with their frequency.
FACE_COUNTS = ((1, 0.3), (2, 0.25), (3, 0.2), (4, 0.15), (6, 0.1))
#: Face width as a fraction of the frame's short side: log-uniform in this range.
FACE_SCALE = (0.08, 0.7)
#: Share of frames holding one face close to the camera, at :data:`CLOSE_UP_SCALE`.
CLOSE_UP_FRAMES = 0.2
#: Face width as a fraction of the frame's short side in a close-up: uniform in this range.
CLOSE_UP_SCALE = (0.6, 1.0)
#: Share of frames turned to grey.
GREY_FRAMES = 0.3


@dataclass(frozen=True)
class BoxedFace:
    """A labelled face: its image, its box in the image's pixels, and the part of the image
    to paste (``region``, x1 y1 x2 y2 pixels; None: the whole image, for tight crops), and
    optionally a teacher's probabilities for its expression (:mod:`~fer_edge_training.teacher`)."""

    path: Path
    label: int
    box: tuple[float, float, float, float]
    region: tuple[int, int, int, int] | None = None
    teacher: np.ndarray | None = field(default=None, compare=False)

    def target(self, num_classes: int, soft: float) -> np.ndarray:
        """The expression target: ``(1 - soft) * one-hot + soft * teacher`` (the one-hot
        alone when the face has no teacher probabilities)."""
        onehot = np.eye(num_classes, dtype=np.float32)[self.label]
        if self.teacher is None:
            return onehot
        return (1 - soft) * onehot + soft * self.teacher.astype(np.float32)


def faces_from_images(images, context: float = 0.5) -> list[BoxedFace]:
    """One :class:`BoxedFace` per labelled box of full-frame images (any reader of
    :mod:`fer_edge_training.datasets`), pasting the box grown by ``context`` of its size on
    each side, so hair and chin come along as they do in the tight crops."""
    faces = []
    for image in images:
        with Image.open(image.path) as im:
            w, h = im.size
        for box, label in zip(image.boxes, image.labels, strict=False):
            x1, y1, x2, y2 = (float(v) for v in box)
            mx, my = context * (x2 - x1), context * (y2 - y1)
            region = (
                max(0, int(x1 - mx)),
                max(0, int(y1 - my)),
                min(w, int(np.ceil(x2 + mx))),
                min(h, int(np.ceil(y2 + my))),
            )
            faces.append(BoxedFace(Path(image.path), int(label), (x1, y1, x2, y2), region))
    return faces


def read_boxes(csv_path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """Face boxes by image name, normalised to [0, 1] of the image the CSV was made on
    (columns ``image,x1,y1,x2,y2,score,faces,width,height``); images with no face are left
    out. Normalised boxes work on the reduced copy and on the full-size upstream images."""
    boxes = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not row["x1"]:
                continue
            w, h = float(row["width"]), float(row["height"])
            boxes[row["image"]] = (
                float(row["x1"]) / w,
                float(row["y1"]) / h,
                float(row["x2"]) / w,
                float(row["y2"]) / h,
            )
    return boxes


def in_pixels(box, width: float, height: float) -> tuple[float, float, float, float]:
    """A normalised box of :func:`read_boxes` in the pixels of a ``width`` x ``height``
    image."""
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def boxed_faces(crops: list[FaceCrop], boxes: dict) -> list[BoxedFace]:
    """The crops that have a face box, with the box in the crop's own pixels."""
    faces = []
    for crop in crops:
        box = boxes.get(crop.path.name)
        if box is None:
            continue
        with Image.open(crop.path) as im:
            w, h = im.size
        faces.append(BoxedFace(crop.path, crop.label, in_pixels(box, w, h)))
    return faces


def class_balanced_weights(labels: list[int], num_classes: int, power: float = 0.5) -> np.ndarray:
    """Sampling weights so class c is drawn in proportion to ``count_c ** (1 - power)``:
    ``power=0`` keeps the data's frequencies, ``1`` draws every class equally often. The
    default 0.5 lifts fear (21 images) and disgust without showing their few faces so
    often that the model memorises them."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = np.zeros_like(counts)
    np.power(counts, -power, out=per_class, where=counts > 0)
    weights = per_class[np.asarray(labels)]
    return weights / weights.sum()


def load_backgrounds(folders: list[Path] | None = None) -> list[np.ndarray]:
    """RGB background photos: every image in ``folders``, or scikit-image's photos."""
    if folders:
        paths = sorted(
            p
            for folder in folders
            for p in Path(folder).rglob("*")
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp")
        )
    else:
        import skimage

        root = Path(skimage.__file__).parent / "data"
        paths = [root / name for name in SKIMAGE_BACKGROUNDS]
    if not paths:
        raise FileNotFoundError(f"no background images in {folders}")
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB")))
    return images


def _choice(rng: np.random.Generator, table) -> float:
    values, probs = zip(*table, strict=False)
    return values[rng.choice(len(values), p=np.asarray(probs) / sum(probs))]


def _relight(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random contrast, brightness and per-channel gain (white balance)."""
    x = img.astype(np.float32)
    contrast = rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)
    brightness = rng.uniform(-40, 40) * strength
    gain = rng.uniform(1 - 0.15 * strength, 1 + 0.15 * strength, size=3).astype(np.float32)
    mean = x.mean()
    x = ((x - mean) * contrast + mean + brightness) * gain
    return np.clip(x, 0, 255).astype(np.uint8)


def _background(backgrounds, rng, width: int, height: int) -> np.ndarray:
    src = backgrounds[rng.integers(len(backgrounds))]
    sh, sw = src.shape[:2]
    aspect = width / height
    area = rng.uniform(0.1, 1.0) * sw * sh
    cw = int(min(sw, math.sqrt(area * aspect)))
    ch = int(min(sh, cw / aspect))
    cw = max(8, int(ch * aspect)) if cw > ch * aspect else max(8, cw)
    x0 = rng.integers(0, max(1, sw - cw + 1))
    y0 = rng.integers(0, max(1, sh - ch + 1))
    im = Image.fromarray(src[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))
    return _relight(np.asarray(im), rng, 1.0)


def face_mask(w: int, h: int, box, feather: float) -> np.ndarray:
    """Alpha in [0, 1] over a w x h crop: 1 on an ellipse around the face ``box`` (a bit
    larger than the box, so chin and forehead stay), fading to 0 over ``feather`` of its
    radius, and fading to 0 towards the crop's own edges so they never show."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = 0.62 * (box[2] - box[0]), 0.7 * (box[3] - box[1])
    xs = (np.arange(w, dtype=np.float32) + 0.5 - cx) / rx
    ys = (np.arange(h, dtype=np.float32) + 0.5 - cy) / ry
    r = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
    ellipse = np.clip((1.0 - r) / feather + 1.0, 0.0, 1.0)
    ramp = max(2.0, 0.08 * min(w, h))
    edge_x = np.clip(np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / ramp, 0, 1)
    edge_y = np.clip(np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / ramp, 0, 1)
    return ellipse * edge_y[:, None].astype(np.float32) * edge_x[None, :].astype(np.float32)


def _overlap(a, b) -> float:
    """Area of the intersection of boxes a and b over the area of b."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / max((b[2] - b[0]) * (b[3] - b[1]), 1e-6)


def blend(canvas: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> bool:
    """Blends ``pixels`` (float RGB) with ``alpha`` into ``canvas`` with its top-left
    corner at (x0, y0), clipped to the canvas; False when nothing of it is inside."""
    height, width = canvas.shape[:2]
    ch, cw = pixels.shape[:2]
    cx0, cy0 = max(0, -x0), max(0, -y0)
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(width, x0 + cw), min(height, y0 + ch)
    if fx1 <= fx0 or fy1 <= fy0:
        return False
    region = canvas[fy0:fy1, fx0:fx1].astype(np.float32)
    src = pixels[cy0 : cy0 + fy1 - fy0, cx0 : cx0 + fx1 - fx0]
    a = alpha[cy0 : cy0 + fy1 - fy0, cx0 : cx0 + fx1 - fx0]
    canvas[fy0:fy1, fx0:fx1] = (src * a + region * (1 - a)).round().astype(np.uint8)
    return True


def open_face(face: BoxedFace) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The RGB image to paste for ``face`` (its ``region``, or the whole image) and the
    face box in that image's pixels."""
    with Image.open(face.path) as im:
        crop = im.convert("RGB")
    bx1, by1, bx2, by2 = face.box
    if face.region is not None:
        crop = crop.crop(face.region)
        rx, ry = face.region[:2]
        bx1, by1, bx2, by2 = bx1 - rx, by1 - ry, bx2 - rx, by2 - ry
    return crop, (bx1, by1, bx2, by2)


def _paste_face(canvas, face: BoxedFace, rng, placed: list, close_up: bool):
    """Pastes one face at a random scale (:data:`FACE_SCALE`, or :data:`CLOSE_UP_SCALE`
    for a ``close_up``; less if its box would not fit); returns its box in canvas pixels,
    or None when it found no place."""
    height, width = canvas.shape[:2]
    crop, (bx1, by1, bx2, by2) = open_face(face)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        bx1, bx2 = crop.width - bx2, crop.width - bx1
    if close_up:
        relative_width = rng.uniform(*CLOSE_UP_SCALE)
    else:
        relative_width = math.exp(rng.uniform(*np.log(FACE_SCALE)))
    face_w = relative_width * min(width, height)
    scale = face_w / max(bx2 - bx1, 1.0)
    scale = min(scale, 0.98 * width / max(bx2 - bx1, 1.0), 0.98 * height / max(by2 - by1, 1.0))
    cw, ch = max(2, round(crop.width * scale)), max(2, round(crop.height * scale))
    box_in_crop = (bx1 * scale, by1 * scale, bx2 * scale, by2 * scale)
    for _ in range(10):
        # the face box inside the frame; the rest of the crop may leave it
        ox = rng.uniform(-box_in_crop[0], width - box_in_crop[2])
        oy = rng.uniform(-box_in_crop[1], height - box_in_crop[3])
        box = (
            ox + box_in_crop[0],
            oy + box_in_crop[1],
            ox + box_in_crop[2],
            oy + box_in_crop[3],
        )
        extent = (ox, oy, ox + cw, oy + ch)
        if all(_overlap(extent, other) < 0.15 and _overlap(box, other) < 0.15 for other in placed):
            break
    else:
        return None
    pixels = np.asarray(crop.resize((cw, ch), Image.BILINEAR), dtype=np.float32)
    pixels = _relight(pixels.astype(np.uint8), rng, 0.5).astype(np.float32)
    alpha = face_mask(cw, ch, box_in_crop, rng.uniform(0.15, 0.35))[..., None]
    x0, y0 = int(round(ox)), int(round(oy))
    if not blend(canvas, pixels, alpha, x0, y0):
        return None
    shift = (x0 - ox, y0 - oy)
    return (
        max(0.0, box[0] + shift[0]),
        max(0.0, box[1] + shift[1]),
        min(float(width), box[2] + shift[0]),
        min(float(height), box[3] + shift[1]),
    )


def compose_frame(
    faces: list[BoxedFace],
    weights: np.ndarray | None,
    backgrounds: list[np.ndarray],
    size: int,
    rng: np.random.Generator,
    letterbox: bool = True,
    soft: float | None = None,
    close_ups: float = CLOSE_UP_FRAMES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: ``image [size, size, 3] uint8`` (letterboxed like the runtime when
    ``letterbox``, else the camera-shaped frame itself), ``boxes [k, 4]`` float32
    (x1, y1, x2, y2 in the returned image's pixels) and ``labels [k]`` int64, or, with
    ``soft``, the expression targets ``[k, C]`` float32 of :meth:`BoxedFace.target`.
    ``close_ups``: share of close-up frames."""
    aspect = _choice(rng, ASPECTS)
    if aspect >= 1:
        width, height = size, max(8, round(size / aspect))
    else:
        width, height = max(8, round(size * aspect)), size
    canvas = _background(backgrounds, rng, width, height)
    # no draw when close-ups are off: frames stay those of runs made before they existed
    close_up = close_ups > 0 and rng.random() < close_ups
    count = 1 if close_up else int(_choice(rng, FACE_COUNTS))
    placed, labels = [], []
    for _ in range(count):
        face = faces[rng.choice(len(faces), p=weights)]
        box = _paste_face(canvas, face, rng, placed, close_up)
        if box is not None:
            placed.append(box)
            labels.append(face.label if soft is None else face.target(NUM_CLASSES, soft))
    if rng.random() < GREY_FRAMES:
        grey = canvas.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        canvas = np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)
    if rng.random() < 0.2:
        noise = rng.normal(0, rng.uniform(2, 8), canvas.shape).astype(np.float32)
        canvas = np.clip(canvas.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if letterbox:
        framed = np.full((size, size, 3), int(PAD_VALUE), np.uint8)
        framed[:height, :width] = canvas
        canvas = framed
    boxes = np.asarray(placed, np.float32).reshape(-1, 4)
    if soft is not None:
        return canvas, boxes, np.asarray(labels, np.float32).reshape(-1, NUM_CLASSES)
    return canvas, boxes, np.asarray(labels, np.int64)
