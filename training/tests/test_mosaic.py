"""Training frames of real photos: boxes follow the pixels through every cut, zoom,
mirror and turn; cut faces lose their label, then their box; frames are letterboxed as the
runtime does; a seed gives the same frame."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fer_edge_training import mosaic
from fer_edge_training.backgrounds import background_photos
from fer_edge_training.mosaic import Sources, compose_frame, labels_of, place
from fer_edge_training.photos import Photo, unlabelled
from fer_edge_training.preprocess import PAD_VALUE

RED = (255, 0, 0)


def red_square_photo(folder, name, box, size=(150, 150), label=3, ellipse=False):
    """A grey photo with a red square at ``box``, or with ``ellipse`` a red ellipse filling
    it (a face whose box a turn changes): where the face is, visibly."""
    image = Image.new("RGB", size, (60, 60, 60))
    if ellipse:
        ImageDraw.Draw(image).ellipse([box[0], box[1], box[2] - 1, box[3] - 1], fill=RED)
    else:
        image.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), RED), box[:2])
    path = folder / f"{name}.png"
    image.save(path)
    target = np.eye(7, dtype=np.float32)[label][None]
    return Photo(path, np.asarray([box], np.float32), target, label)


def red_extent(canvas):
    ys, xs = np.nonzero((canvas[..., 0] > 200) & (canvas[..., 1] < 60) & (canvas[..., 2] < 60))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_the_box_follows_the_face_through_zoom_shift_and_mirror(tmp_path, seed):
    photo = red_square_photo(tmp_path, "p", (40, 50, 90, 110))
    rng = np.random.default_rng(seed)
    canvas = np.zeros((120, 160, 3), np.uint8)
    rect = (20, 10, 110, 100)
    boxes, targets = place(canvas, photo, rect, rng, zoom=1.3, focus=photo.boxes[0])
    assert len(boxes) == 1
    assert boxes[0] == pytest.approx(red_extent(canvas), abs=1.5)
    assert targets[0].tolist() == photo.targets[0].tolist()
    # nothing is drawn outside the rectangle
    outside = canvas.copy()
    outside[10:110, 20:130] = 0
    assert not outside.any()


@pytest.mark.parametrize("degrees", [-30.0, -12.5, 20.0, 30.0, 90.0])
def test_a_turned_face_keeps_its_box_on_its_pixels(tmp_path, degrees):
    # a tall ellipse off the photo's centre: the turn moves it and changes its box's shape
    photo = red_square_photo(tmp_path, "p", (50, 30, 90, 100), ellipse=True)
    for seed in range(3):
        canvas = np.zeros((120, 160, 3), np.uint8)
        rect = (10, 10, 140, 100)
        rng = np.random.default_rng(seed)
        boxes, targets = place(canvas, photo, rect, rng, 1.2, photo.boxes[0], roll=degrees)
        assert len(boxes) == 1 and targets[0].tolist() == photo.targets[0].tolist()
        assert boxes[0] == pytest.approx(red_extent(canvas), abs=2.0)
    if degrees == 90.0:  # lying on its side: wider than tall
        width, height = boxes[0, 2:] - boxes[0, :2]
        assert width > 1.5 * height


def test_rolls_come_at_the_asked_share_and_none_by_default(sources):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert sources.draw_roll(rng) == 0.0
    assert rng.bit_generator.state == state  # no draw: seeds keep their frames
    rolling = Sources(sources.lfw, sources.ferplus, roll=0.4)
    rolls = np.array([rolling.draw_roll(rng) for _ in range(2000)])
    assert (rolls != 0).mean() == pytest.approx(0.4, abs=0.04)
    assert np.abs(rolls).max() <= mosaic.MAX_ROLL and np.abs(rolls).max() > 25
    with pytest.raises(ValueError, match="roll share"):
        Sources(sources.lfw, sources.ferplus, roll=1.5)


def test_a_cut_face_loses_its_label_then_its_box(tmp_path):
    photo = red_square_photo(tmp_path, "p", (0, 40, 100, 110), size=(300, 150))
    seen = set()
    for seed in range(40):
        canvas = np.zeros((150, 150, 3), np.uint8)
        # zoom 1: 150 of the 300 columns, from an offset in [0, 150]; the face's share
        # left inside is its visible width over its 100 px
        boxes, targets = place(canvas, photo, (0, 0, 150, 150), np.random.default_rng(seed), 1.0)
        if len(boxes) == 0:
            seen.add("dropped")
            continue
        visible = (boxes[0, 2] - boxes[0, 0]) / 100
        assert visible >= mosaic.MIN_VISIBLE
        labelled = not np.isnan(targets[0]).any()
        assert labelled == (visible >= mosaic.MIN_LABELLED)
        seen.add("labelled" if labelled else "box only")
    assert seen == {"labelled", "box only", "dropped"}


@pytest.fixture
def sources(tmp_path):
    lfw = [red_square_photo(tmp_path, f"l{k}", (50, 40, 100, 100), label=k % 7) for k in range(7)]
    ferplus = [
        red_square_photo(tmp_path, f"f{k}", (4, 0, 42, 48), size=(48, 48), label=k % 7)
        for k in range(7)
    ]
    return Sources(lfw, ferplus)


def test_frames_are_letterboxed_with_boxes_inside_and_reproducible(sources):
    for seed in range(12):
        image, boxes, targets = compose_frame(sources, 96, np.random.default_rng(seed))
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert boxes.shape[1] == 4 and targets.shape == (len(boxes), 7)
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes <= 96).all()
        # the grey padding is below or right of the frame, never inside a box
        pad = np.all(image == int(PAD_VALUE), axis=2)
        rows, cols = np.nonzero(~pad)
        assert not pad[: rows.max() + 1, : cols.max() + 1].all()
        again = compose_frame(sources, 96, np.random.default_rng(seed))
        assert np.array_equal(again[0], image) and np.array_equal(again[1], boxes)


def test_every_kind_of_frame_appears_with_faces_at_many_sizes(sources):
    rng = np.random.default_rng(0)
    widths, counts = [], []
    for _ in range(60):
        _, boxes, targets = compose_frame(sources, 128, rng, letterbox=False)
        widths += ((boxes[:, 2] - boxes[:, 0]) / 128).tolist()
        counts.append(len(boxes))
        assert set(labels_of(targets)) <= set(range(-1, 7))
    assert min(widths) < 0.1 and max(widths) > 0.5
    assert 1 in counts and max(counts) >= 9


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_a_close_up_grid_holds_a_labelled_face_in_each_cell(sources, grid):
    close_ups = Sources(sources.lfw, sources.ferplus, close_ups=1.0)
    size, cell = 96, 96 / grid
    for seed in range(4):
        rng = np.random.default_rng(seed)
        _, boxes, targets = compose_frame(close_ups, size, rng, close_up_grid=grid)
        assert len(boxes) == grid * grid and (labels_of(targets) >= 0).all()
        # one face a cell, filling most of it (the red square is 38 x 48 of 48 x 48)
        cells = np.floor((boxes[:, :2] + boxes[:, 2:]) / 2 / cell).astype(int)
        assert sorted(map(tuple, cells)) == [(j, i) for j in range(grid) for i in range(grid)]
        widths = (boxes[:, 2] - boxes[:, 0]) / cell
        assert (widths > 0.6).all() and (widths <= 1.0).all()
    with pytest.raises(ValueError, match="close-up grid"):
        compose_frame(close_ups, size, np.random.default_rng(0), close_up_grid=30)


def blue_photos(folder, n=3):
    """Face-free photos: plain blue, a colour no other test photo has."""
    folder.mkdir()
    for k in range(n):
        Image.new("RGB", (300, 200), (0, 0, 255)).save(folder / f"blue{k}.jpg")
    return background_photos(folder)


def test_background_cells_hold_no_faces_and_cost_no_draws_when_off(sources, tmp_path):
    backgrounds = blue_photos(tmp_path / "bg")
    every_cell = Sources(
        sources.lfw, sources.ferplus, close_ups=0.0, backgrounds=backgrounds, background_tiles=1.0
    )
    mosaics = 0
    for seed in range(20):
        image, boxes, _ = compose_frame(every_cell, 96, np.random.default_rng(seed), False)
        if len(boxes) == 0:  # a mosaic, every cell face-free: blue (re-lit), or a grey frame
            mosaics += 1
            blue = image[..., 2].astype(int) > image[..., 0].astype(int) + 100
            assert (image[..., 0] == image[..., 2]).all() or blue.mean() > 0.9
        else:  # a "photo" frame: one LFW photo and its face, no background in it
            assert len(boxes) == 1
    assert 5 <= mosaics <= 18
    # a share of 0 draws nothing: the frames of a seed stay the ones drawn without them
    off = Sources(sources.lfw, sources.ferplus, backgrounds=backgrounds, background_tiles=0.0)
    for seed in range(6):
        plain = compose_frame(sources, 96, np.random.default_rng(seed))
        same = compose_frame(off, 96, np.random.default_rng(seed))
        assert np.array_equal(plain[0], same[0]) and np.array_equal(plain[1], same[1])
    with pytest.raises(ValueError, match="face-free photos"):
        Sources(sources.lfw, sources.ferplus, background_tiles=0.2)
    with pytest.raises(ValueError, match="background tile share"):
        Sources(sources.lfw, sources.ferplus, backgrounds=backgrounds, background_tiles=2.0)


def test_labels_of_marks_unlabelled_faces():
    targets = np.concatenate([np.eye(7, dtype=np.float32)[[2, 5]], unlabelled(1)])
    assert labels_of(targets).tolist() == [2, 5, -1]


def test_sources_draw_rare_classes_more_often_than_they_occur(tmp_path):
    lfw = [red_square_photo(tmp_path, f"a{k}", (50, 40, 100, 100), label=4) for k in range(9)]
    lfw.append(red_square_photo(tmp_path, "rare", (50, 40, 100, 100), label=2))
    flat = Sources(lfw, lfw, power=0.0)
    balanced = Sources(lfw, lfw, power=1.0)
    assert flat.lfw_weights[-1] == pytest.approx(0.1)
    assert balanced.lfw_weights[-1] == pytest.approx(0.5)
