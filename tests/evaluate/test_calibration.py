"""Calibration and shift: ECE by hand, temperature recovered from known data, the Wilson bound, the
threshold's bound, and the phone-photo corruptions (deterministic, shape-keeping, really different)."""

from __future__ import annotations

import numpy as np
import pytest

from pocketvision.errors import PocketVisionError
from pocketvision.evaluate import classification_metrics
from pocketvision.evaluate.calibration import fit_temperature, reliability, scale, wilson_lower
from pocketvision.evaluate.shift import CORRUPTIONS, corrupt, shifted_copy


def test_ece_by_hand():
    # top-label confidences .7 .6 .8 .5 .8 .5, right: 1 0 1 1 1 0 -> bins {.5: 1/2 right, .6: 0, .7: 1, .8: 2/2}
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                  [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    r = reliability(p, y)
    assert r["ece"] == pytest.approx((0 * 2 + 0.6 + 0.3 + 0.2 * 2) / 6)
    assert r["mce"] == pytest.approx(0.6)
    assert sum(b["n"] for b in r["bins"]) == 6
    assert classification_metrics(y, p, ["a", "b", "c"])["ece"] == pytest.approx(r["ece"])


def test_temperature_recovered():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (20000, 3))
    y = np.array([rng.choice(3, p=row) for row in scale(z, 2.5)])  # labels drawn at temperature 2.5
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.08)
    assert reliability(scale(z, t), y)["ece"] < 0.02 < reliability(scale(z, 1.0), y)["ece"]


def test_wilson_lower_bound():
    assert wilson_lower(77, 77) == pytest.approx(77 / (77 + 1.645**2))  # p = 1: n / (n + z^2)
    assert wilson_lower(50, 100) < 0.5 < wilson_lower(900, 1000) + 0.5
    assert wilson_lower(2, 2) < 0.6  # two of two is not "precision 1.0" to trust


def test_threshold_bound_refuses_a_lucky_cut():
    s = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    y = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 1])
    probs = np.stack([s, 1 - s], 1)
    point = classification_metrics(y, probs, ["hotdog", "not_hotdog"], target_precision=0.8)
    assert point["threshold_source"] == "target_precision" and point["threshold"] == pytest.approx(0.55)
    bound = classification_metrics(y, probs, ["hotdog", "not_hotdog"], target_precision=0.8, bound=True)
    assert bound["threshold_source"] == "fallback" and bound["threshold"] == 0.5
    # 200 clean positives above 0.6 and negatives below: the bound is reachable and picks the clean cut
    s2 = np.r_[np.linspace(0.61, 0.99, 200), np.linspace(0.01, 0.39, 200)]
    y2 = np.r_[np.zeros(200, int), np.ones(200, int)]
    m = classification_metrics(y2, np.stack([s2, 1 - s2], 1), ["hotdog", "not_hotdog"], bound=True)
    assert m["threshold_source"] == "target_precision" and m["threshold_precision_lower95"] > 0.98


def test_corruptions_are_deterministic_and_real():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    x[:, 20:40, 10:30] = 200  # some structure for blur / rotation to move
    for kind in CORRUPTIONS:
        a, b = corrupt(x, kind, seed=3), corrupt(x, kind, seed=3)
        assert a.shape == x.shape and a.dtype == np.uint8, kind
        assert np.array_equal(a, b), kind
        assert np.abs(a.astype(int) - x).mean() > 2, kind  # a visible change, not a no-op
    assert np.array_equal(corrupt(x, "gray")[..., 0], corrupt(x, "gray")[..., 2])
    with pytest.raises(PocketVisionError, match="unknown corruption 'fog'"):
        corrupt(x, "fog")
    twin, kinds = shifted_copy(np.repeat(x, 4, axis=0))
    assert twin.shape == (12, 64, 48, 3) and set(kinds) == set(CORRUPTIONS)
