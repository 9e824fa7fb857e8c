"""The real images every compression step is measured and calibrated on.

Held-out images (the bundle's validation split, or ``data``'s test/val split) judge quality; training
images calibrate int8 ranges and fine-tune palettes, so the held-out set is never fitted to. Which images
those are is the task's knowledge (``Task.held_out``, ``Task.training_images``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PocketVisionError
from ..core.pixels import load_pixels

MIN_CALIBRATION = 32  # fewer images give unstable activation ranges


def held_out(bundle, data: str | Path | None = None):
    """-> ``HeldOut`` (uint8 NHWC pixels, the task's truth) of the held-out images, or a one-line error.

    Where the task's truth survives it, the set carries a phone-photo shifted twin (``HeldOut.shifted``): a
    compressed model that holds on val but not on a blurred or dark photo is over budget (4-bit Lite0 kept 99%
    agreement on val and 83% on another photographer's photos).
    """
    held = bundle.held_out(data)
    if not len(held.pixels):
        raise PocketVisionError("compression is measured on real held-out images: pass --data DIR (its test/ or "
                                "val/ split is used) — the bundle's training data "
                                f"({bundle.meta.get('data', {}).get('root', 'unknown')}) is not available.")
    return held.with_shifted_twin() if bundle.plugin.shift_keeps_truth else held


def training_pixels(bundle, data: str | Path | None = None, limit: int = 512, need: int = MIN_CALIBRATION,
                    seed: int = 0) -> np.ndarray:
    """Up to ``limit`` training images (a seeded sample), at the contract's size.

    Uses the bundle's own training split when its data exists, else ``data``'s. Raises when fewer than
    ``need`` images are found.
    """
    paths, where = bundle.plugin.training_images(bundle.meta, data)
    if len(paths) < need:
        raise PocketVisionError(f"calibration needs at least {need} training images; found {len(paths)} in "
                                f"{where or 'no data folder (pass --data DIR)'}. Add images or pass --data DIR "
                                "with a train/ split.")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(paths))[:limit]
    pixels, _ = load_pixels([paths[i] for i in sorted(pick)], bundle.contract)
    if len(pixels) < need:
        raise PocketVisionError(f"calibration needs at least {need} readable training images; only "
                                f"{len(pixels)} of {len(pick)} could be decoded.")
    # Clean photos only. Measured (EfficientNet-Lite0, hotdog): a quarter of them under phone-photo corruptions
    # widened the MinMax int8 ranges and cost 1.1 points on val and 2.1 on its shifted twin (0.9947 -> 0.9840,
    # 0.9519 -> 0.9305); budgets are still judged on both halves (held_out).
    return pixels


def budget_quality(task, meta: dict, held, reference: np.ndarray):
    """-> ``quality(outputs)`` in the budget's sense: the float model's quality minus the drop of the worse part
    (held-out photos, or their phone-photo twin), so "within 1 point" means on val *and* off it, as ``verify``
    judges (a drop on the twin is not averaged away by the clean half)."""
    n = len(held.pixels) - held.shifted
    parts = [slice(0, n)] + ([slice(n, None)] if held.shifted else [])
    truth = held.truth

    def q(outputs: np.ndarray, s: slice) -> float:
        return task.quality(outputs[s], truth[s] if truth is not None else None, reference[s], meta)
    base_parts = [q(reference, s) for s in parts]
    base = task.quality(reference, truth, reference, meta)

    def quality(outputs: np.ndarray) -> float:
        return base - max(b - q(outputs, s) for b, s in zip(base_parts, parts))
    return quality

