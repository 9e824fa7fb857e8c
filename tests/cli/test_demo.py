"""`pocketvision demo`'s drawings, and its stages on a shrunken data set (the README's command as written, with its
defaults, runs in tests/test_walkthrough.py)."""

from __future__ import annotations

from pathlib import Path

from pocketvision.demo import make_image, run_demo


def test_demo_images_differ_by_class():
    """From the same random state the two classes must give different images (the object drawn, and what the state
    draws after it), and one class drawn twice from that state the same image."""
    import numpy as np

    def draw(label: int) -> np.ndarray:
        im = make_image(label, np.random.default_rng(0))
        assert im.size == (160, 160) and im.mode == "RGB"
        return np.asarray(im, np.float32)
    hot, other = draw(0), draw(1)
    assert np.array_equal(hot, draw(0))
    changed = np.abs(hot - other).max(axis=2) > 30
    assert changed.mean() > 0.02, changed.mean()


def test_demo_runs_every_stage(tmp_path):
    s = run_demo(tmp_path / "demo", epochs=2, quiet=True, n_train=40, n_val=10)
    assert s["parity_passed"] is True and s["parity_top1_agreement"] == 1.0
    assert Path(s["onnx"]).stat().st_size > 100_000 and Path(s["bundle"]).exists()
    assert Path(s["report"]).read_text().count("<img") >= 1
    assert 0 < s["latency_p50_ms_1thread"] < 1000 and 0 <= s["val_accuracy"] <= 1
