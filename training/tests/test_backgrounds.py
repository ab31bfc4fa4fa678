"""Face-free photos: one per wallpaper (its largest rendition), no screenshots, icons or
left-out names; reduced once to small JPEGs; an empty folder is an error naming it."""

import pytest
from PIL import Image

from fer_edge_training import backgrounds
from fer_edge_training.backgrounds import background_photos, reduce, wallpapers


def image(path, size, colour=(30, 120, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_one_photo_per_wallpaper_without_screenshots_icons_or_skipped_names(tmp_path):
    kde, mate = tmp_path / "wallpapers", tmp_path / "backgrounds"
    image(kde / "Autumn/contents/images/1280x800.jpg", (1280, 800))
    image(kde / "Autumn/contents/images/2560x1600.jpg", (2560, 1600))
    image(kde / "Autumn/contents/images_dark/1920x1200.jpg", (1920, 1200))
    image(kde / "Autumn/contents/screenshot.jpg", (400, 250))
    image(mate / "mate/nature/Dune.jpg", (1600, 1200))
    image(mate / "mate/abstract/Elephants.jpg", (1920, 1080))
    image(mate / "mate/abstract/Elephants_3840x2160.jpg", (3840, 2160))
    image(mate / "icons/tiny.png", (64, 64))
    image(mate / "gnome/wood-l.webp", (800, 600))
    (mate / "gnome/vector.svg").write_text("<svg/>")
    found = wallpapers([kde, mate], skip={"backgrounds-gnome-wood-l"})
    assert found == {
        "backgrounds-mate-abstract-Elephants": mate / "mate/abstract/Elephants_3840x2160.jpg",
        "backgrounds-mate-nature-Dune": mate / "mate/nature/Dune.jpg",
        "wallpapers-Autumn": kde / "Autumn/contents/images/2560x1600.jpg",
    }
    copies = reduce(found, tmp_path / "out")
    assert sorted(p.name for p in copies) == [f"{name}.jpg" for name in sorted(found)]
    for copy in copies:
        with Image.open(copy) as im:
            assert im.format == "JPEG" and max(im.size) == backgrounds.MAX_SIDE
    photos = background_photos(tmp_path / "out")
    assert len(photos) == 3
    assert all(p.boxes.shape == (0, 4) and p.targets.shape == (0, 7) for p in photos)
    assert all(p.label == -1 and p.labelled_box() is None for p in photos)


def test_an_empty_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        background_photos(tmp_path)
