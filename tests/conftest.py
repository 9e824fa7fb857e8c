"""Shared fixtures. Real data lives in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("POCKETVISION_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; a missing folder fails the test loudly (never a silent skip)."""
    root = data_root()
    if not (root / "hotdog" / "train").is_dir():
        pytest.fail(f"real test data not found at {root} (expected ../shared/data beside the repo, "
                    "or set POCKETVISION_DATA)")
    return root


def _subset(src: Path, dst: Path, per_class: dict[str, int]) -> Path:
    """A small train/val subset of hotdog as symlinks (read in place, nothing copied)."""
    for split, n in per_class.items():
        for cls_dir in sorted((src / split).iterdir()):
            out = dst / split / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted(cls_dir.iterdir())[:n]:
                (out / p.name).symlink_to(p)
    return dst


@pytest.fixture(scope="session")
def hotdog_small(shared_data, tmp_path_factory) -> Path:
    return _subset(shared_data / "hotdog", tmp_path_factory.mktemp("hotdog_small"), {"train": 120, "val": 40})


@pytest.fixture(scope="session")
def trained_bundle(hotdog_small, tmp_path_factory) -> Path:
    """A real (small) model trained once per session on real photos: deepdog alpha=0.25 at 96 px."""
    import pocketvision as pv

    out = tmp_path_factory.mktemp("bundle")
    b = pv.train(hotdog_small, out=out / "hotdog.pvb", arch="deepdog", arch_args={"alpha": 0.25}, size=96,
                 epochs=6, lr=3e-3, run_dir=out / "run", progress=False, tensorboard=False, workers=0)
    return b.path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketvision.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
