"""Training frames made of real photos (:class:`~fer_edge_training.photos.Photo`): what a
kiosk camera sees, faces in colour with hair, shoulders and background, at every size.

:func:`compose_frame` draws one of three kinds of frame, in a camera's aspect ratio
(:data:`ASPECTS`), letterboxed into the square network input as
the runtime does it (top-left, grey 128):

* **mosaic** (YOLOX-style): the frame cut into an n x n grid (:data:`GRID`, cut lines
  jittered) and every cell covered by a photo, zoomed and shifted at random: an LFW
  photo (in :data:`FOCUSED_TILES` of them shifted to keep its labelled face inside), or
  in :data:`FERPLUS_TILES` of the cells a FER+ face, or with ``Sources(backgrounds=...)``
  in a share of the cells a face-free photo (:mod:`~fer_edge_training.backgrounds`) at up
  to :data:`MAX_BACKGROUND_ZOOM` times its covering scale: wood, leaves or cups that are
  no face. With n up to 6 a face is
  down to about 6% of the frame's long side, the smallest faces the real-scene check
  counts. In :data:`MIXUP` of the mosaics a second mosaic is blended in (YOLOX's mixup;
  the faces of both are kept);
* **photo**: one LFW photo covering the frame, zoomed in around its labelled face: a
  person at the kiosk, the face at 50% to 100% of the frame's short side;
* **close-up**: one FER+ face filling a square frame, or with ``close_up_grid`` n, an
  n x n grid of FER+ faces each filling its cell (n^2 faces for the pixels of one: more
  expression examples per step, at 1/n of the size).

Every photo is mirrored at random and, with ``Sources(roll=...)``, a share of them turned
about their centre (a head tilted to one shoulder, which LFW's upright photos and FER+'s
aligned faces never show; each face's box becomes the box of its turned ellipse, the
corners the turn uncovers repeat the photo's edge pixels). Faces cut by a cell's or the
frame's edge keep their box (clipped) when at least :data:`MIN_VISIBLE` of it is inside
and their expression target when at least :data:`MIN_LABELLED` is; less visible faces are
left out. The whole frame is re-lit, turned grey in :data:`GREY_FRAMES` of the frames
(FER+ is grey, cameras are colour: colour must be no clue to the expression), sometimes
blurred or noised.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .photos import NUM_CLASSES, Photo
from .preprocess import PAD_VALUE

#: Frame aspect ratios (width / height) a kiosk camera delivers, with their frequency.
ASPECTS = ((4 / 3, 0.4), (16 / 9, 0.25), (1.0, 0.2), (3 / 4, 0.15))
#: Frame kinds and their frequency.
KINDS = (("mosaic", 0.55), ("photo", 0.25), ("close_up", 0.2))
#: Mosaic grid sizes (n for n x n cells) and their frequency.
GRID = ((2, 0.3), (3, 0.3), (4, 0.2), (5, 0.1), (6, 0.1))
#: Share of mosaic cells covered by a FER+ face instead of an LFW photo.
FERPLUS_TILES = 0.3
#: Share of LFW mosaic cells shifted so that the labelled face stays inside when it fits.
FOCUSED_TILES = 0.7
#: Share of mosaics blended with a second mosaic.
MIXUP = 0.1
#: Share of frames turned grey.
GREY_FRAMES = 0.25
#: A face keeps its box when this share of it is inside its cell, its label at MIN_LABELLED.
MIN_VISIBLE = 0.4
MIN_LABELLED = 0.75
#: Face width in a "photo" frame, as a fraction of the frame's short side.
PHOTO_FACE = (0.5, 1.0)
#: Largest turn of a rolled photo, degrees either way.
MAX_ROLL = 30.0
#: Largest zoom of a face-free photo in a mosaic cell (drawn log-uniformly from 1).
MAX_BACKGROUND_ZOOM = 8.0


class Sources:
    """The photos frames are drawn from, each list with class-balanced sampling weights
    (class c drawn in proportion to ``count_c ** (1 - power)``: 0 keeps the data's
    frequencies, 1 draws every class equally often; photos without a labelled face are
    drawn like the most common class). ``close_ups`` is the share of close-up frames (the
    other kinds keep their relative :data:`KINDS` frequencies); ``roll`` the share of placed
    photos turned by up to :data:`MAX_ROLL` degrees; ``background_tiles`` the share of
    mosaic cells covered by one of the face-free ``backgrounds``. A share of 0 draws no
    random numbers, so frames of a seed are the ones drawn before the option existed."""

    def __init__(
        self,
        lfw: list[Photo],
        ferplus: list[Photo],
        power: float = 0.5,
        close_ups: float = dict(KINDS)["close_up"],
        roll: float = 0.0,
        backgrounds: list[Photo] = (),
        background_tiles: float = 0.0,
    ):
        if not lfw or not ferplus:
            raise ValueError("frames need LFW photos and FER+ faces")
        shares = (("close-up", close_ups), ("roll", roll), ("background tile", background_tiles))
        for name, share in shares:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} share must be within [0, 1], got {share}")
        if background_tiles and not backgrounds:
            raise ValueError("background tiles need face-free photos")
        self.lfw, self.ferplus, self.roll = lfw, ferplus, roll
        self.backgrounds, self.background_tiles = list(backgrounds), background_tiles
        others = sum(f for k, f in KINDS if k != "close_up")
        self.kinds = tuple(
            (k, close_ups if k == "close_up" else f * (1.0 - close_ups) / others) for k, f in KINDS
        )
        self.lfw_weights = _balanced([p.label for p in lfw], power)
        self.ferplus_weights = _balanced([p.label for p in ferplus], power)

    def draw_lfw(self, rng: np.random.Generator) -> Photo:
        return self.lfw[rng.choice(len(self.lfw), p=self.lfw_weights)]

    def draw_ferplus(self, rng: np.random.Generator) -> Photo:
        return self.ferplus[rng.choice(len(self.ferplus), p=self.ferplus_weights)]

    def draw_background(self, rng: np.random.Generator) -> Photo | None:
        """A face-free photo for the next mosaic cell, or None (most cells)."""
        if self.background_tiles == 0.0 or rng.random() >= self.background_tiles:
            return None
        return self.backgrounds[rng.choice(len(self.backgrounds))]

    def draw_roll(self, rng: np.random.Generator) -> float:
        """Degrees to turn the next placed photo (counter-clockwise), 0 for most."""
        if self.roll == 0.0 or rng.random() >= self.roll:
            return 0.0
        return float(rng.uniform(-MAX_ROLL, MAX_ROLL))


def _balanced(labels: list[int], power: float) -> np.ndarray:
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).astype(np.float64)
    per_class = np.zeros_like(counts)
    np.power(counts, -power, out=per_class, where=counts > 0)
    weights = np.where(labels >= 0, per_class[np.maximum(labels, 0)], per_class[counts > 0].min())
    return weights / weights.sum()


def choice(rng: np.random.Generator, table) -> float:
    """A value of ``table`` (pairs of value and frequency), drawn by frequency."""
    values, probs = zip(*table, strict=False)
    return values[rng.choice(len(values), p=np.asarray(probs) / sum(probs))]


def relight(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random contrast, brightness and per-channel gain (white balance)."""
    x = img.astype(np.float32)
    contrast = rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)
    brightness = rng.uniform(-40, 40) * strength
    gain = rng.uniform(1 - 0.15 * strength, 1 + 0.15 * strength, size=3).astype(np.float32)
    mean = x.mean()
    x = ((x - mean) * contrast + mean + brightness) * gain
    return np.clip(x, 0, 255).astype(np.uint8)


def _open_rgb(photo: Photo) -> Image.Image:
    with Image.open(photo.path) as im:
        return im.convert("RGB")


def _turn(size: tuple[int, int], degrees: float) -> np.ndarray:
    """The 2 x 3 affine map of a turn by ``degrees`` counter-clockwise about the centre of
    an image of ``size`` (w, h)."""
    import cv2

    return cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), degrees, 1.0)


def turned_boxes(boxes: np.ndarray, size: tuple[int, int], degrees: float) -> np.ndarray:
    """``boxes [k, 4]`` of an image of ``size`` turned as :func:`rolled` turns it: the
    boxes of the turned ellipses they bound (a face's box keeps its size as the head
    tilts, as a face detector draws it)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
    cx, cy = _turn(size, degrees) @ np.vstack([centres, np.ones(len(boxes))])
    a, b = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    half_w, half_h = np.hypot(a * cos, b * sin), np.hypot(a * sin, b * cos)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).astype(np.float32)


def rolled(image: Image.Image, boxes: np.ndarray, degrees: float) -> tuple[Image.Image, np.ndarray]:
    """``image`` turned ``degrees`` counter-clockwise about its centre, same size, the
    uncovered corners filled with its edge pixels, and its face ``boxes`` with it
    (:func:`turned_boxes`)."""
    import cv2

    pixels = cv2.warpAffine(
        np.asarray(image),
        _turn(image.size, degrees),
        image.size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return Image.fromarray(pixels), turned_boxes(boxes, image.size, degrees)


def place(
    canvas: np.ndarray,
    photo: Photo,
    rect: tuple[int, int, int, int],
    rng: np.random.Generator,
    zoom: float,
    focus: np.ndarray | None = None,
    min_labelled: float = MIN_LABELLED,
    roll: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Covers ``rect`` (x, y, w, h) of ``canvas`` with ``photo`` turned ``roll`` degrees
    (:func:`rolled`), scaled to cover it times ``zoom``, shifted at random (so that
    ``focus``, a box of the photo, stays inside when it fits) and mirrored half the time;
    returns the faces' boxes in canvas pixels and their targets (see the module docstring
    for cut faces; ``min_labelled`` replaces :data:`MIN_LABELLED`)."""
    x, y, w, h = rect
    image, boxes = _open_rgb(photo), photo.boxes
    if roll:
        if focus is not None:
            focus = turned_boxes(focus, image.size, roll)[0]
        image, boxes = rolled(image, boxes, roll)
    iw, ih = image.size
    scale = max(w / iw, h / ih) * zoom
    span_x, span_y = iw * scale - w, ih * scale - h
    lo_x, hi_x, lo_y, hi_y = 0.0, span_x, 0.0, span_y
    if focus is not None:
        lo_x, hi_x = _keep_inside(focus[0] * scale, focus[2] * scale, w, span_x)
        lo_y, hi_y = _keep_inside(focus[1] * scale, focus[3] * scale, h, span_y)
    ox, oy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    source = (ox / scale, oy / scale, (ox + w) / scale, (oy + h) / scale)
    tile = image.resize((w, h), Image.BILINEAR, box=source)
    boxes = boxes * scale - [ox, oy, ox, oy]
    if rng.random() < 0.5:
        tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    canvas[y : y + h, x : x + w] = np.asarray(tile)
    return _visible(boxes.reshape(-1, 4), photo.targets, (x, y, w, h), min_labelled)


def _keep_inside(a: float, b: float, size: float, span: float) -> tuple[float, float]:
    """Offsets in [0, span] that keep [a, b] inside a window of ``size``, or all of
    [0, span] when it cannot be kept."""
    lo, hi = max(0.0, b - size), min(span, a)
    return (lo, hi) if lo <= hi else (0.0, span)


def _visible(boxes, targets, rect, min_labelled) -> tuple[np.ndarray, np.ndarray]:
    x, y, w, h = rect
    clipped = np.clip(boxes, 0, [w, h, w, h])
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 1e-6, None), 1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), 1) / area
    keep = inside >= MIN_VISIBLE
    out_targets = targets[keep].copy()
    out_targets[inside[keep] < min_labelled] = np.nan
    return clipped[keep] + [x, y, x, y], out_targets


def _cuts(length: int, n: int, rng: np.random.Generator) -> list[int]:
    """n + 1 cut positions from 0 to ``length``, the inner ones jittered by 20% of a cell."""
    cell = length / n
    inner = [round(cell * (i + rng.uniform(-0.2, 0.2))) for i in range(1, n)]
    return [0, *inner, length]


def _mosaic(sources: Sources, width: int, height: int, rng, min_labelled: float):
    canvas = np.zeros((height, width, 3), np.uint8)
    n = int(choice(rng, GRID))
    xs, ys = _cuts(width, n, rng), _cuts(height, n, rng)
    boxes, targets = [], []
    for i in range(n):
        for j in range(n):
            rect = (xs[j], ys[i], xs[j + 1] - xs[j], ys[i + 1] - ys[i])
            if rect[2] < 4 or rect[3] < 4:
                continue
            background = sources.draw_background(rng)
            if background is not None:
                zoom = float(np.exp(rng.uniform(0.0, np.log(MAX_BACKGROUND_ZOOM))))
                photo, focus = background, None
            elif rng.random() < FERPLUS_TILES:
                photo, zoom, focus = sources.draw_ferplus(rng), rng.uniform(1.0, 1.2), None
            else:
                photo = sources.draw_lfw(rng)
                focus = photo.labelled_box() if rng.random() < FOCUSED_TILES else None
                zoom = rng.uniform(1.0, 1.6)
            roll = sources.draw_roll(rng)
            b, t = place(canvas, photo, rect, rng, zoom, focus, min_labelled, roll)
            boxes.append(b)
            targets.append(t)
    return canvas, boxes, targets


def _close_ups(sources: Sources, size: int, n: int, rng, min_labelled: float):
    """A ``size`` square of n x n FER+ faces, each filling its cell."""
    canvas = np.zeros((size, size, 3), np.uint8)
    cuts = [round(size * i / n) for i in range(n + 1)]
    boxes, targets = [], []
    for i in range(n):
        for j in range(n):
            rect = (cuts[j], cuts[i], cuts[j + 1] - cuts[j], cuts[i + 1] - cuts[i])
            photo, zoom = sources.draw_ferplus(rng), rng.uniform(1.0, 1.15)
            roll = sources.draw_roll(rng)
            b, t = place(canvas, photo, rect, rng, zoom, None, min_labelled, roll)
            boxes.append(b)
            targets.append(t)
    return canvas, boxes, targets


def compose_frame(
    sources: Sources,
    size: int,
    rng: np.random.Generator,
    letterbox: bool = True,
    min_labelled: float = MIN_LABELLED,
    close_up_grid: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: ``image [size, size, 3]`` uint8 (letterboxed like the runtime when
    ``letterbox``, else the camera-shaped frame), ``boxes [k, 4]`` float32 in its pixels
    and ``targets [k, C]`` float32 (NaN rows: faces without an expression label; a cut
    face keeps its label when ``min_labelled`` of it is visible). A close-up frame holds
    ``close_up_grid`` x ``close_up_grid`` FER+ faces."""
    if close_up_grid < 1 or size // close_up_grid < 4:
        raise ValueError(f"a {close_up_grid} x {close_up_grid} close-up grid in {size} px")
    kind = choice(rng, sources.kinds)
    if kind == "close_up":
        width = height = size
    else:
        aspect = choice(rng, ASPECTS)
        width, height = (size, round(size / aspect))
        if aspect < 1:
            width, height = round(size * aspect), size
    if kind == "mosaic":
        canvas, boxes, targets = _mosaic(sources, width, height, rng, min_labelled)
        if rng.random() < MIXUP:
            other, more_boxes, more_targets = _mosaic(sources, width, height, rng, min_labelled)
            canvas = ((canvas.astype(np.uint16) + other) // 2).astype(np.uint8)
            boxes, targets = boxes + more_boxes, targets + more_targets
    elif kind == "close_up":
        canvas, boxes, targets = _close_ups(sources, size, close_up_grid, rng, min_labelled)
    else:
        canvas = np.zeros((height, width, 3), np.uint8)
        rect = (0, 0, width, height)
        photo = sources.draw_lfw(rng)
        face = photo.labelled_box()
        zoom = 1.0
        if face is not None:
            with Image.open(photo.path) as im:
                cover = max(width / im.width, height / im.height)
            wanted = rng.uniform(*PHOTO_FACE) * min(width, height)
            zoom = max(1.0, wanted / max(face[2] - face[0], 1.0) / cover)
        roll = sources.draw_roll(rng)
        b, t = place(canvas, photo, rect, rng, zoom, face, min_labelled, roll)
        boxes, targets = [b], [t]
    canvas = relight(canvas, rng, 1.0)
    if rng.random() < GREY_FRAMES:
        grey = canvas.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        canvas = np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)
    if rng.random() < 0.1:
        radius = rng.uniform(0.5, 1.5)
        canvas = np.asarray(Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(radius)))
    if rng.random() < 0.15:
        noise = rng.normal(0, rng.uniform(2, 8), canvas.shape).astype(np.float32)
        canvas = np.clip(canvas.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if letterbox:
        framed = np.full((size, size, 3), int(PAD_VALUE), np.uint8)
        framed[:height, :width] = canvas
        canvas = framed
    all_boxes = np.concatenate(boxes).astype(np.float32).reshape(-1, 4)
    all_targets = np.concatenate(targets).astype(np.float32).reshape(-1, NUM_CLASSES)
    return canvas, all_boxes, all_targets


def labels_of(targets: np.ndarray) -> np.ndarray:
    """Class index of each target row (its largest value), -1 for unlabelled faces."""
    labels = np.full(len(targets), -1, np.int64)
    known = ~np.isnan(targets).any(1)
    labels[known] = targets[known].argmax(1)
    return labels
