"""Keypoints under pose: the pose scores behind the rotated / least-frontal subsets, and flip averaging."""

from __future__ import annotations

import numpy as np

from pocketvision.tasks.keypoints.metrics import keypoint_metrics, pose_scores
from pocketvision.tasks.keypoints import flip_averaged

FACE = np.array([[30, 35], [50, 35], [40, 45], [33, 55], [47, 55]], float)  # eyes, nose, mouth corners
NAMES = ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]


def _rot(p: np.ndarray, deg: float) -> np.ndarray:
    t = np.radians(deg)
    c = p.mean(0)
    return (p - c) @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).T + c


def _gt(points: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.concatenate([p, np.full((len(p), 1), 2.0)], 1) for p in points])


def test_pose_scores_tell_a_tilt_from_a_profile():
    profile = FACE.copy()
    profile[2, 0] = 31  # the nose swings to the side: a turned head, not a tilted one
    roll, resid = pose_scores(_gt([FACE, _rot(FACE, 30), _rot(FACE, -10), profile]))
    assert np.argmax(np.abs(roll)) == 1 and abs(abs(roll[1] - roll[0]) - 30) < 1e-6
    assert np.argmax(resid) == 3
    assert abs(resid[1] - resid[0]) < 1e-9  # a pure rotation adds no residual
    m = keypoint_metrics(_gt([FACE] * 10), _gt([FACE + 1] * 10)[..., :2], NAMES)
    assert m["pose"]["rotated"]["n"] == 2 and m["pose"]["rotated"]["nme"] == m["nme"]


def test_flip_averaging_mirrors_back_and_swaps_the_pairs():
    """A detector that is exactly mirror-equivariant gives the same answer with and without flip averaging; a
    biased one (every x one pixel to the right) has its bias cancelled."""
    img = np.zeros((1, 40, 60, 3), np.uint8)
    img[0, 10:14, 10:14] = 255  # the "left eye"
    img[0, 20:24, 40:44] = 255  # the "right eye"

    def detect(px: np.ndarray, bias: float = 0.0) -> np.ndarray:
        out = []
        for a in px:
            ys, xs = np.nonzero(a[..., 0] > 128)
            left, right = xs < a.shape[1] / 2, xs >= a.shape[1] / 2
            pts = [[xs[m].mean() + 0.5 + bias, ys[m].mean() + 0.5, 1.0] for m in (left, right)]
            out.append(pts)
        return np.array(out, np.float32)

    perm = np.array([1, 0])
    plain = detect(img)
    assert np.allclose(flip_averaged(detect, perm, 60)(img), plain)
    biased = flip_averaged(lambda px: detect(px, bias=1.0), perm, 60)(img)
    assert np.allclose(biased, plain)
