"""Keypoint augmentation moves the points with the pixels: property tests over random transforms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pocketvision.core.contract import Contract
from pocketvision.tasks.keypoints.augment import (KeypointAugmentConfig, KeypointAugmenter, hflip_matrix, random_matrix,
                                          transform_points, warp_image)
from pocketvision.errors import PocketVisionError

GEOMETRY = KeypointAugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, occlude=0, rotate=35,
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
    with pytest.raises(PocketVisionError, match="rotate"):
        KeypointAugmentConfig(rotate=200)


def test_occlusion_hides_a_patch_and_keeps_every_label():
    """A hidden eye is still an eye: the pixels under the patch change, the points and visibilities do not."""
    cfg = KeypointAugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, rotate=0, scale=(1, 1),
                                translate=0, perspective=0, hflip=0, occlude=1.0)
    contract = Contract(size=(64, 64), resize="squash")
    img = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
    pts = np.array([[20, 20, 2], [44, 20, 2], [32, 40, 1]], np.float32)
    plain = KeypointAugmenter(cfg.model_copy(update={"occlude": 0.0}), contract, PERM)(img, pts, 0)
    hidden_px, hidden_pts = KeypointAugmenter(cfg, contract, PERM)(img, pts, 0)
    np.testing.assert_array_equal(hidden_pts, plain[1])
    changed = np.any(hidden_px != plain[0], axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 0.01 * 64 * 64 and changed.sum() <= 0.4 * 0.4 * 64 * 64 + 1
    assert changed[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean() > 0.9  # one rectangle


def test_rotation_range_is_sized_from_the_labels_roll():
    from pocketvision.tasks.keypoints.augment import AUTO_ROTATE_RANGE, rotation_for
    rng = np.random.default_rng(0)
    face = np.array([[-1, -1], [1, -1], [0, 0], [-0.8, 1], [0.8, 1]], np.float64) * 10 + 40

    def tilted(max_deg: float) -> np.ndarray:
        out = []
        for a in np.radians(rng.uniform(-max_deg, max_deg, 400)):
            r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            out.append(np.c_[(face - 40) @ r.T + 40, np.full(5, 2.0)])
        return np.stack(out)
    upright, tilted_set = rotation_for(tilted(2)), rotation_for(tilted(25))
    assert upright == AUTO_ROTATE_RANGE[0]  # upright faces: the floor
    assert 30 <= tilted_set <= AUTO_ROTATE_RANGE[1]  # ~1.5 x their 99th percentile of roll (~25 degrees)
    assert KeypointAugmentConfig(rotate="auto").rotate == "auto" and KeypointAugmentConfig().rotate == 15
