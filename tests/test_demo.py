"""`pocketvision demo` end to end on a shrunken built-in data set (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

from pocketvision.demo import make_image, run_demo


def test_demo_images_differ_by_class():
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = make_image(0, rng), make_image(1, rng)
    assert a.size == b.size == (160, 160) and a.mode == "RGB"


def test_demo_runs_every_stage(tmp_path):
    s = run_demo(tmp_path / "demo", epochs=2, quiet=True, n_train=40, n_val=10)
    assert s["parity_passed"] is True and s["parity_top1_agreement"] == 1.0
    assert Path(s["onnx"]).stat().st_size > 100_000 and Path(s["bundle"]).exists()
    assert Path(s["report"]).read_text().count("<img") >= 1
    assert 0 < s["latency_p50_ms_1thread"] < 1000 and 0 <= s["val_accuracy"] <= 1
