import json

import numpy as np
import pytest

from fer_edge_training.preprocess import (
    MEAN,
    STD,
    letterbox_size,
    load_rgb,
    preprocess,
    resize_bilinear,
    unnormalise,
)

from .conftest import GOLDEN, SAMPLE


def rand_img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w,size", [(200, 300, 320), (127, 333, 128), (640, 512, 320)])
def test_letterbox_geometry_and_padding(h, w, size):
    x, r = preprocess(rand_img(h, w), size)
    assert x.shape == (1, 3, size, size) and x.dtype == np.float32
    assert r == pytest.approx(min(size / h, size / w))
    nh, nw, _ = letterbox_size(h, w, size)
    assert max(nh, nw) == size  # the long side fills the square
    assert abs(nw / nh - w / h) < 2.0 / min(nh, nw)  # aspect kept (to a pixel)
    px = unnormalise(x)
    # padding right and bottom only, value 128
    np.testing.assert_allclose(px[nh:, :, :], 128.0, atol=1e-3)
    np.testing.assert_allclose(px[:, nw:, :], 128.0, atol=1e-3)
    # top-left corner holds image content (not all 128)
    assert np.abs(px[:nh, :nw] - 128.0).max() > 10


def test_round_half_up_not_half_even():
    # w * r = 2.5 exactly: round-half-even would give 2
    assert letterbox_size(8, 5, 4) == (4, 3, 0.5)
    # h * r = 4.5 exactly
    assert letterbox_size(9, 20, 10)[0] == 5


def test_identity_resize_and_normalisation():
    img = rand_img(16, 16, 1)
    x, r = preprocess(img, 16)
    assert r == 1.0
    expected = (img.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected)


def test_bilinear_half_pixel_by_hand():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[0, 100], [200, 40]]
    out = resize_bilinear(img, 4, 4)[..., 0]
    # output x: sx = (x+0.5)/2 - 0.5 -> -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1)
    fx = np.array([0.0, 0.25, 0.75, 1.0], np.float32)
    top = 0 + (100 - 0) * fx
    bot = 200 + (40 - 200) * fx
    want = top[None, :] + (bot - top)[None, :] * fx[:, None]
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    assert out.dtype == np.float32


def test_downscale_2x_averages_pairs():
    img = rand_img(8, 10, 2)
    out = resize_bilinear(img, 4, 5)
    p = img.astype(np.float32)
    want = (p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]) / 4
    np.testing.assert_allclose(out, want, atol=1e-4)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4, 3), np.float32))


@pytest.mark.skipif(not GOLDEN.exists(), reason="tests/data/golden not generated")
def test_golden_preprocess_files():
    meta = json.loads((GOLDEN / "preprocess.json").read_text())
    img = load_rgb(str(SAMPLE))
    x, r = preprocess(img, meta["full_image"]["size"])
    np.testing.assert_array_equal(np.load(GOLDEN / "input.npy"), x)
    assert meta["full_image"]["r"] == r
    assert len(meta["cases"]) >= 2
    for case in meta["cases"]:
        c = case["crop"]
        crop = np.load(GOLDEN / case["rgb"])
        np.testing.assert_array_equal(crop, img[c["y"] : c["y"] + c["h"], c["x"] : c["x"] + c["w"]])
        t, rr = preprocess(crop, case["size"])
        np.testing.assert_array_equal(np.load(GOLDEN / case["output"]), t)
        assert rr == case["r"]
        assert list(letterbox_size(c["h"], c["w"], case["size"])[:2]) == case["resized_hw"]
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 3_000_000
