"""Face-free photos for the training frames' mosaic cells (:mod:`~fer_edge_training.mosaic`):
wood, leaves, sand, water, flowers, animals, streets. Every other training photo holds a
face, so without them the detector learns "round, shaded and textured" is a face (coins,
gravel and grass were boxed as faces, see ``models/MODEL_CARD.md``).

The photos are Debian's desktop wallpapers (``apt-get install gnome-backgrounds
mate-backgrounds plasma-workspace-wallpapers ukui-wallpapers``; free licences, see each
package's ``copyright`` file), brought down to :data:`MAX_SIDE` pixels once, so that
drawing a crop costs a small JPEG decode and not a 5120x2880 PNG one:

    python -m fer_edge_training.backgrounds --out ../runs/backgrounds \\
        /usr/share/backgrounds /usr/share/wallpapers

Kept out: files named ``screenshot`` (a wallpaper again, under a desktop's panels),
vector images, images under :data:`MIN_SIDE` pixels and :data:`LEFT_OUT`. Same-named
renditions of one wallpaper at several sizes are kept once (the largest). Nothing here
looks for faces: the wallpapers were checked by eye on a contact sheet (Debian 12's
packages: 86 wallpapers, 3 of them left out, see ``training/data/README.md``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .photos import NUM_CLASSES, Photo

#: Long side of the reduced copies, in pixels.
MAX_SIDE = 1024
#: Images with a shorter short side are left out (icons, thumbnails).
MIN_SIDE = 256
#: Wallpapers with a face in them (cartoon creatures), checked by eye.
LEFT_OUT = frozenset(
    {"backgrounds-the-mouse", "backgrounds-firstgeneration", "wallpapers-FlyingKonqui"}
)
#: Raster formats read.
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def wallpapers(roots: list[Path], skip: set[str] = frozenset()) -> dict[str, Path]:
    """The raster images under ``roots`` by :func:`wallpaper_name`, one per wallpaper (the
    largest rendition of each ``.../<name>/contents/images*/`` set), without screenshots
    and names in ``skip``."""
    best: dict[str, tuple[int, Path]] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in SUFFIXES or "screenshot" in path.stem.lower():
                continue
            name = wallpaper_name(path, root)
            if name in skip:
                continue
            with Image.open(path) as im:
                w, h = im.size
            if min(w, h) < MIN_SIDE:
                continue
            if name not in best or w * h > best[name][0]:
                best[name] = (w * h, path)
    return {name: path for name, (_, path) in sorted(best.items())}


def wallpaper_name(path: Path, root: Path) -> str:
    """``wallpapers-Autumn`` for ``wallpapers/Autumn/contents/images/2560x1600.jpg`` (KDE's
    layout, one folder a wallpaper), else the path without its suffix
    (``backgrounds-mate-nature-Dune`` for ``backgrounds/mate/nature/Dune.jpg``), without a
    ``_<width>x<height>`` ending."""
    parts = path.relative_to(root).with_suffix("").parts
    if "contents" in parts:
        parts = parts[: parts.index("contents")]
    else:  # MATE's "Elephants_3840x2160.png" is "Elephants.jpg" at another size
        parts = (*parts[:-1], re.sub(r"_\d+x\d+$", "", parts[-1]))
    return "-".join((root.name, *parts))


def reduce(paths: dict[str, Path], out: Path) -> list[Path]:
    """Each image as an RGB JPEG of at most :data:`MAX_SIDE` a side in ``out``, named by its
    wallpaper; an existing copy is kept. Returns the copies."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for name, path in paths.items():
        copy = out / f"{name}.jpg"
        if not copy.exists():
            with Image.open(path) as im:
                image = im.convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
            partial = copy.with_suffix(".part")
            image.save(partial, "JPEG", quality=92)
            partial.rename(copy)  # no half-written copy is ever read
        copies.append(copy)
    return copies


def background_photos(folder: Path) -> list[Photo]:
    """Every image in ``folder`` as a :class:`Photo` without faces."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no face-free photos ({', '.join(SUFFIXES)}) in {folder}")
    no_boxes = np.zeros((0, 4), np.float32)
    no_targets = np.zeros((0, NUM_CLASSES), np.float32)
    return [Photo(path, no_boxes, no_targets) for path in paths]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", type=Path, nargs="+", help="folders of wallpapers")
    ap.add_argument("--out", type=Path, required=True, help="folder for the reduced copies")
    ap.add_argument(
        "--skip", nargs="*", default=sorted(LEFT_OUT), help="wallpaper names to leave out"
    )
    args = ap.parse_args(argv)
    copies = reduce(wallpapers(args.roots, set(args.skip)), args.out)
    print(f"{len(copies)} face-free photos in {args.out}")


if __name__ == "__main__":
    main()
