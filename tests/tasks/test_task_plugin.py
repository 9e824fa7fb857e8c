"""A fourth task added from outside the package: ``tests/tasks/plugins/pv_brightness.py`` registers itself
through the ``pocketvision.tasks`` entry point of a distribution (``pv_brightness-0.1.dist-info``), and the ordinary CLI trains
it, exports it to ONNX (verified before it appears), verifies it again and predicts with it. No file of the
package names the task."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(__file__).resolve().parents[2] / "src" / "pocketvision"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with the plug-in's folder on the path, as if its distribution were installed."""
    return run_cli(*args, cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS),
                                                                                     os.environ.get("PYTHONPATH", "")])})


def _photos(root: Path, n: int = 64) -> None:
    """Noisy photos at known brightness: what the task must learn to read."""
    rng = np.random.default_rng(0)
    root.mkdir()
    with open(root / "brightness.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "value"])
        for i in range(n):
            v = float(rng.uniform(0.1, 0.9))
            px = np.clip(v * 255 + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"{i:03d}.png")
            w.writerow([f"{i:03d}.png", f"{v:.4f}"])


@pytest.mark.slow
def test_a_task_from_outside_trains_exports_and_verifies_through_the_cli(tmp_path):
    _photos(tmp_path / "photos")
    r = _cli("train", "photos", "--task", "brightness", "--size", "32", "--epochs", "40", "--lr", "3e-3",
             "--batch-size", "16", "--out", "b.pvb", "--json", "--no-tensorboard", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout)["metrics"]
    assert metrics["val_mae"] < 0.5 * metrics["mean_baseline_mae"], metrics  # it learned to read brightness

    r = _cli("export", "b.pvb", "--to", "onnx", "--out", "b.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "b.onnx").is_file()
    r = _cli("verify", "b.pvb", "b.onnx", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["passed"], r.stdout + r.stderr[-2000:]

    r = _cli("predict", "b.onnx", "photos/000.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "photos" / "brightness.csv") as f:
        truth = float(next(csv.DictReader(f))["value"])
    value = float(r.stdout.split("brightness")[-1])
    assert abs(value - truth) < 0.15, (value, truth)


def test_the_package_never_names_the_plugin_task():
    assert not [p for p in SRC.rglob("*") if p.is_file() and p.suffix in (".py", ".js", ".html", ".toml")
                and "pv_brightness" in p.read_text()]


def test_a_broken_plugin_is_named_and_left_out(tmp_path):
    (tmp_path / "pv_broken-0.1.dist-info").mkdir()
    (tmp_path / "pv_broken-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pv-broken\n"
                                                                    "Version: 0.1\n")
    (tmp_path / "pv_broken-0.1.dist-info" / "entry_points.txt").write_text("[pocketvision.tasks]\nbroken = pv_broken\n")
    (tmp_path / "pv_broken.py").write_text("raise RuntimeError('half-written plug-in')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = run_cli("info", "--json", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "task plug-in 'broken' (pv_broken) failed to load" in r.stderr and "half-written plug-in" in r.stderr
