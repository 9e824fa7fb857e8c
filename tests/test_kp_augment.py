"""Keypoint augmentation moves the points with the pixels: property tests over random transforms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pocketvision.contract import Contract
from pocketvision.data.kp_augment import (KeypointAugmentConfig, KeypointAugmenter, hflip_matrix, random_matrix,
                                          transform_points, warp_image)
from pocketvision.errors import PocketVisionError

GEOMETRY = KeypointAugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, rotate=35,
                                 scale=(0.75, 1.25), translate=0.1, perspective=0.05, hflip=0.5)
PERM = np.array([1, 0, 2])  # points 0 and 1 are a flip pair (left/right eye), 2 is the nose


def _blob(w: int, h: int, xy) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    g = np.exp(-((xx - xy[0]) ** 2 + (yy - xy[1]) ** 2) / (2 * 1.5**2))
    return Image.fromarray(np.repeat((g * 255).astype(np.uint8)[..., None], 3, 2))


def _centroid(img: np.ndarray) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    g[g == 114] = 0  # the border fill
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    return np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), src_w=st.integers(48, 160), src_h=st.integers(48, 160),
       resize=st.sampled_from(["squash", "center_crop", "letterbox"]))
def test_draw_then_transform_equals_transform_then_draw(seed, src_w, src_h, resize):
    contract = Contract(size=(56, 64), resize=resize)
    aug = KeypointAugmenter(GEOMETRY, contract, PERM)
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(0.3, 0.7, (3, 1)) * src_w, rng.uniform(0.3, 0.7, (3, 1)) * src_h,
                np.full((3, 1), 2.0)].astype(np.float32)
    _, flipped = random_matrix(np.random.default_rng(seed), GEOMETRY, 64, 56)  # same draws as the augmenter
    for i in range(3):
        out, moved = aug(_blob(src_w, src_h, pts[i]), pts, seed)
        row = int(np.where(PERM == i)[0][0]) if flipped else i  # a mirrored left eye is the right eye
        x, y, v = moved[row]
        if not (6 < x < 58 and 6 < y < 50):  # near an edge the blob is cut and its centroid moves
            continue
        assert v == 2
        # Drawn before the transform, found after it, where the transformed label says it is.
        assert np.linalg.norm(_centroid(out) - (x, y)) < 0.6


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), w=st.integers(8, 120), h=st.integers(8, 120))
def test_flipping_twice_is_identity(seed, w, h):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    pts = np.c_[rng.uniform(0, w, (3, 1)), rng.uniform(0, h, (3, 1)), rng.integers(1, 3, (3, 1))].astype(np.float32)
    f = hflip_matrix(w)
    once = transform_points(pts, f, (w, h), PERM)
    twice = transform_points(once, f, (w, h), PERM)
    np.testing.assert_allclose(twice, pts, atol=1e-4)
    assert not np.allclose(once[:2, :2], pts[:2, :2])  # and a single flip really moved and swapped them
    back = warp_image(warp_image(img, f, (w, h)), f, (w, h))
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_points_leaving_the_frame_become_invisible():
    pts = np.array([[5, 5, 2], [30, 30, 2], [60, 10, 1]], np.float32)
    shift = np.array([[1, 0, -10], [0, 1, 0], [0, 0, 1.0]])
    out = transform_points(pts, shift, (64, 64), None)
    assert out[:, 2].tolist() == [0, 2, 1]


def test_unknown_augment_option_is_an_error():
    with pytest.raises(PocketVisionError, match="unknown option"):
        KeypointAugmentConfig(hflp=0.5)
