"""Input preprocessing: the ONE definition that the Rust runtime reproduces.

Input: an RGB image as ``uint8`` array ``[h, w, 3]`` (row-major, channel-last).
Output: ``float32`` tensor ``[1, 3, S, S]`` (NCHW) and the scale ``r``.

1. Scale. ``r = min(S / h, S / w)`` in float64. New size
   ``nw = floor(w * r + 0.5)``, ``nh = floor(h * r + 0.5)`` (float64; round half up,
   NOT Python's round-half-even), each then clamped to ``[1, S]``.

2. Resize ``[h, w] -> [nh, nw]``, bilinear with half-pixel centres, no antialiasing.
   For every output column ``x`` in ``0..nw`` (float64)::

       sx = (x + 0.5) * w / nw - 0.5       evaluated as ((x + 0.5) * w) / nw - 0.5
       sx = clamp(sx, 0, w - 1)
       x0 = floor(sx);  x1 = min(x0 + 1, w - 1);  fx = float32(sx - x0)

   and likewise for rows with ``h``, ``nh`` -> ``y0, y1, fy``. Interpolation is in
   float32 on the uint8 values converted to float32, in this order::

       top = p[y0, x0] + (p[y0, x1] - p[y0, x0]) * fx
       bot = p[y1, x0] + (p[y1, x1] - p[y1, x0]) * fx
       v   = top + (bot - top) * fy

   The result is NOT rounded back to uint8.

3. Letterbox. Canvas ``S x S x 3`` filled with 128.0; the resized image is placed at the
   TOP-LEFT corner (rows ``0..nh``, columns ``0..nw``); padding is right and bottom only.

4. Normalise, float32, per channel c (RGB order)::

       out = (v / 255 - mean[c]) / std[c]
       mean = (0.485, 0.456, 0.406),  std = (0.229, 0.224, 0.225)

   (``v / 255`` is a float32 division by 255.0, then float32 subtraction of the float32
   mean, then float32 division by the float32 std.)

5. Layout: HWC -> CHW, add the batch axis: ``[1, 3, S, S]``.

Undo the letterbox on a detection: divide its letterboxed coordinates by ``r``
(no offset: the image is at the top-left).
"""

from __future__ import annotations

import math

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PAD_VALUE = 128.0


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int, float]:
    """``(nh, nw, r)`` of the letterbox of an ``h x w`` image into ``size x size``."""
    if h < 1 or w < 1:
        raise ValueError(f"empty image {h}x{w}")
    r = min(size / h, size / w)
    nw = min(max(int(math.floor(w * r + 0.5)), 1), size)
    nh = min(max(int(math.floor(h * r + 0.5)), 1), size)
    return nh, nw, r


def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear taps along one axis: (i0, i1, frac float32)."""
    x = np.arange(n_out, dtype=np.float64)
    s = ((x + 0.5) * n_in) / n_out - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (s - i0).astype(np.float32)
    return i0, i1, frac


def resize_bilinear(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of ``uint8 [h, w, C]`` to ``float32 [nh, nw, C]``."""
    h, w = img.shape[:2]
    p = img.astype(np.float32)
    x0, x1, fx = _axis_taps(w, nw)
    y0, y1, fy = _axis_taps(h, nh)
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    r0 = p[y0]  # [nh, w, C]
    r1 = p[y1]
    top = r0[:, x0] + (r0[:, x1] - r0[:, x0]) * fx
    bot = r1[:, x0] + (r1[:, x1] - r1[:, x0]) * fx
    return (top + (bot - top) * fy).astype(np.float32, copy=False)


def preprocess(img: np.ndarray, size: int = 320) -> tuple[np.ndarray, float]:
    """RGB ``uint8 [h, w, 3]`` -> (``float32 [1, 3, size, size]``, ``r``). See module doc."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [h, w, 3], got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    nh, nw, r = letterbox_size(h, w, size)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.float32)
    canvas[:nh, :nw] = resize_bilinear(img, nh, nw)
    out = (canvas / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None]).astype(np.float32), r


def unnormalise(x: np.ndarray) -> np.ndarray:
    """Inverse of step 4: ``[1, 3, S, S]`` -> float32 pixel values ``[S, S, 3]`` in 0..255."""
    return (x[0].transpose(1, 2, 0) * STD + MEAN) * np.float32(255.0)


def load_rgb(path: str) -> np.ndarray:
    """Decode an image file to RGB uint8 ``[h, w, 3]`` (Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
