"""Parity: the same real images through the source model and an exported file (DESIGN.md section 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Contract
from ..errors import ImageDecodeError

PROB_TOLERANCE = 1e-3
KP_TOLERANCE_PX = 0.05  # float exports: max coordinate difference, in model-input pixels
MIN_AGREEMENT = 0.995


def load_pixels(paths: Sequence[Path], contract: Contract) -> tuple[np.ndarray, list[int]]:
    """Decode once so both models see byte-identical inputs; unreadable files are skipped."""
    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(contract.load(p))
            kept.append(i)
        except ImageDecodeError:
            continue
    h, w = contract.size
    return (np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)), kept


def batched(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def compare(ref_probs: np.ndarray, cand_probs: np.ndarray, y_true: np.ndarray | None = None,
            tolerance: float = PROB_TOLERANCE, min_agreement: float = MIN_AGREEMENT) -> dict[str, Any]:
    diff = np.abs(ref_probs.astype(np.float64) - cand_probs.astype(np.float64))
    agree = float((ref_probs.argmax(1) == cand_probs.argmax(1)).mean())
    out: dict[str, Any] = {"n": int(len(ref_probs)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                           "mean_abs_diff": float(diff.mean()) if diff.size else 0.0, "top1_agreement": agree,
                           "tolerance": tolerance, "min_agreement": min_agreement}
    if y_true is not None and len(y_true):
        ra = float((ref_probs.argmax(1) == y_true).mean())
        ca = float((cand_probs.argmax(1) == y_true).mean())
        out.update(reference_accuracy=ra, candidate_accuracy=ca, accuracy_change=ca - ra)
    out["passed"] = bool(out["n"] > 0 and out["max_abs_diff"] <= tolerance and agree >= min_agreement)
    return out


def verify(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
           paths: Sequence[Path], contract: Contract, labels: Sequence[int] | None = None,
           tolerance: float = PROB_TOLERANCE, min_agreement: float = MIN_AGREEMENT) -> dict[str, Any]:
    pixels, kept = load_pixels(paths, contract)
    y = np.asarray([labels[i] for i in kept]) if labels is not None else None
    ref = batched(reference, pixels)
    cand = batched(candidate, pixels)
    return compare(ref, cand, y, tolerance, min_agreement)


def verify_keypoints(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
                     paths: Sequence[Path], contract: Contract, tolerance: float = KP_TOLERANCE_PX,
                     quality: Callable[[np.ndarray, list[int]], float] | None = None) -> dict[str, Any]:
    """Keypoint parity: max/mean coordinate difference in model-input pixels, and (with ``quality``,
    1 - NME on the labels) the metric change."""
    pixels, kept = load_pixels(paths, contract)
    ref = batched(reference, pixels)
    cand = batched(candidate, pixels)
    d = np.linalg.norm(ref[..., :2].astype(np.float64) - cand[..., :2].astype(np.float64), axis=-1)
    out: dict[str, Any] = {"n": int(len(ref)), "max_coord_diff_px": float(d.max()) if d.size else 0.0,
                           "mean_coord_diff_px": float(d.mean()) if d.size else 0.0,
                           "max_score_diff": float(np.abs(ref[..., 2] - cand[..., 2]).max()) if d.size else 0.0,
                           "tolerance_px": tolerance}
    if quality is not None and len(ref):
        rq, cq = quality(ref, kept), quality(cand, kept)
        out.update(reference_nme=1 - rq, candidate_nme=1 - cq, nme_change=rq - cq,
                   # the classification fields the CLI's parity table and budgets read
                   reference_accuracy=rq, candidate_accuracy=cq, accuracy_change=cq - rq)
    out["passed"] = bool(out["n"] > 0 and out["max_coord_diff_px"] <= tolerance)
    return out
