"""The real images every compression step is measured and calibrated on.

Held-out images (the bundle's validation split, or ``data``'s test/val split) judge accuracy; training
images calibrate int8 ranges and fine-tune palettes, so the held-out set is never fitted to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PocketVisionError
from ..export.verify import load_pixels

MIN_CALIBRATION = 32  # fewer images give unstable activation ranges


def held_out(bundle, data: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 NHWC pixels, labels) of the held-out images."""
    samples = bundle.validation_samples(data)
    if samples and bundle.task == "keypoints":
        pixels, kept = load_pixels([s.path for s in samples], bundle.contract)
        return pixels, bundle._model_frame(samples, kept)
    if not samples:
        raise PocketVisionError("compression is measured on real held-out images: pass --data DIR (a labelled "
                                "folder; its test/ or val/ split is used) — the bundle's training data "
                                f"({bundle.meta.get('data', {}).get('root', 'unknown')}) is not available.")
    pixels, kept = load_pixels([s.path for s in samples], bundle.contract)
    return pixels, np.array([samples[i].label for i in kept])


def training_pixels(bundle, data: str | Path | None = None, limit: int = 512, need: int = MIN_CALIBRATION,
                    seed: int = 0) -> np.ndarray:
    """Up to ``limit`` training images (stratified by the seed), at the contract's size.

    Uses the bundle's own training split when its data folder exists, else ``data``'s train split.
    Raises when fewer than ``need`` images are found.
    """
    from ..data.folder import scan

    root = None
    d = bundle.meta.get("data", {})
    if bundle.task == "keypoints":
        from ..data.keypoints import load_keypoints
        root = d.get("root") if d.get("root") and Path(d["root"]).exists() else data
        samples = (load_keypoints(root, val_fraction=d.get("val_fraction", 0.1), seed=d.get("seed", 0),
                                  flip_pairs="none", exclude=set(d.get("excluded", ()))).train if root else [])
    elif d.get("root") and Path(d["root"]).is_dir():
        root = Path(d["root"])
        samples = scan(root, val_fraction=d.get("val_fraction", 0.15), seed=d.get("seed", 0),
                       classes=bundle.labels).train
    elif data is not None:
        root = Path(data)
        samples = scan(root, classes=bundle.labels).train if root.is_dir() else []
    else:
        samples = []
    if len(samples) < need:
        where = str(root) if root else "no data folder (pass --data DIR)"
        raise PocketVisionError(f"calibration needs at least {need} training images; found {len(samples)} in "
                                f"{where}. Add images or pass --data DIR with a train/ split.")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(samples))[:limit]
    pixels, _ = load_pixels([samples[i].path for i in sorted(pick)], bundle.contract)
    if len(pixels) < need:
        raise PocketVisionError(f"calibration needs at least {need} readable training images; only "
                                f"{len(pixels)} of {len(pick)} could be decoded.")
    return pixels
