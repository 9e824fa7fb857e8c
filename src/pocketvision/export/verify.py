"""Parity: the same real images through the source model and an exported file.

The comparison itself is the task's (probabilities, pixel coordinates, PSNR); the target decides whether its
runtime runs here (numeric parity) or only a structural check is possible (Core ML off macOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.pixels import batched, load_pixels  # noqa: F401  (load_pixels: the earlier home of this helper)
from ..errors import PocketVisionError
from .base import target_for_path


class NoImages(PocketVisionError):
    """Parity needs real images and there are none."""


def verify_export(bundle, exported: str | Path, data: str | Path | None = None, tolerance: float | None = None,
                  precision: str | None = None, max_drop: float = 1.0, target=None) -> dict[str, Any]:
    """``target``: the export target that wrote ``exported`` (default: recognised from the path)."""
    task = bundle.plugin
    target = target or target_for_path(exported)
    structural = target.inspect(exported, bundle.export_meta(), task)
    if structural is not None:
        return {**structural, "file": str(exported)}
    held = bundle.held_out(data)
    if not len(held.pixels):
        raise NoImages("verify needs real images: pass --data DIR (labelled data of the model's task).")
    if task.shift_keeps_truth:  # parity and budget on the held-out photos and on their phone-photo twin
        held = held.with_shifted_twin()
    cand = target.open(exported)
    try:
        if cand.labels != bundle.labels:
            raise PocketVisionError(f"{exported}: labels {cand.labels} differ from the bundle's {bundle.labels}.")
        meta = cand.meta
        precision = precision or meta.get("precision", "fp32")
        ref = batched(bundle.predict_pixels, held.pixels)
        out = batched(cand.run_pixels, held.pixels)
        embedding = _embedding_parity(bundle, cand, held.pixels, precision) if meta.get("teach") else None
    finally:
        cand.close()
    n = len(held.pixels) - held.shifted
    truth = held.truth
    v = task.compare(ref[:n], out[:n], truth[:n] if truth is not None else None, bundle.meta, tolerance)
    parts = [v]
    if held.shifted:
        v["shifted"] = task.compare(ref[n:], out[n:], truth[n:] if truth is not None else None, bundle.meta, tolerance)
        parts.append(v["shifted"])
    budget = precision != "fp32" and tolerance is None  # outputs move by design: judged by the budget
    for p in parts:
        if budget:
            p["passed"] = bool(p["n"] and task.within_budget(p["reference_quality"], p["candidate_quality"], max_drop))
            p["criterion"] = task.budget_text(precision, max_drop)
    names = ["held-out photos", "their phone-photo twin"][:len(parts)]
    if embedding is not None:  # a teachable file: what a device learns on must match too
        v["embedding"] = embedding
        parts.append(embedding)
        names.append("the embedding")
    passed = [p["passed"] for p in parts]  # before v, which is also the held-out part, says the whole verdict
    v["passed"] = all(passed)
    v["precision"] = precision
    # compression and retraining record a "stage", search and placement an "op"; the file's words are checked here
    if lineage := [str(s.get("stage") or s.get("op")) for s in meta.get("lineage", [])
                   if isinstance(s, dict) and (s.get("stage") or s.get("op"))]:
        v["lineage"] = lineage
    if not v["passed"]:  # name what broke and by how much, so an expected int8 difference never reads like a bug
        v["broke"] = [_broke(name, p, task, budget, max_drop) for name, p, ok in zip(names, parts, passed) if not ok]
    v["file"] = str(exported)
    return v


# A personal head sees unit rows, so an embedding's direction is what it learns on: fp32 keeps every photo's (the
# 6th digit moves); compressed files move it by design, judged on the typical photo (int8 Lite0: mean 0.990,
# least 0.93 of 160 photos).
MIN_COSINE_FP32 = 0.9999
MEAN_COSINE_COMPRESSED = 0.98


def _embedding_parity(bundle, cand, pixels: np.ndarray, precision: str) -> dict[str, Any]:
    ref = batched(lambda p: bundle.run_outputs(p, teachable=True)["embedding"], pixels).astype(np.float64)
    got = batched(lambda p: cand.run_outputs(p)["embedding"], pixels).astype(np.float64)
    if got.shape != ref.shape or not len(ref):
        return {"passed": False, "n": len(pixels), "detail": f"shape {got.shape}, the bundle's {ref.shape}"}
    cos = np.sum(ref * got, 1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    fp32 = precision == "fp32"
    what, value, need = ("least", cos.min(), MIN_COSINE_FP32) if fp32 else ("mean", cos.mean(), MEAN_COSINE_COMPRESSED)
    return {"passed": bool(value >= need), "n": int(len(cos)), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "detail": f"{what} cosine to the bundle's {value:.6f} over {len(cos)} photos (needs >= {need}"
                      + (")" if fp32 else f"; least {cos.min():.4f})")}


def _broke(name: str, p: dict[str, Any], task, budget: bool, max_drop: float) -> str:
    """'their phone-photo twin: accuracy 0.9519 -> 0.9358 (-1.61 points; the budget allows -1.0)'."""
    if "reference_quality" not in p and "detail" in p:  # the embedding's parity
        return f"{name}: {p['detail']}"
    if budget and "reference_quality" in p:
        ref, cand = p["reference_quality"], p["candidate_quality"]
        return (f"{name}: {task.outputs.quality} {ref:.4f} -> {cand:.4f} ({100 * (cand - ref):+.2f} points; the "
                f"budget allows -{max_drop:g})")
    return f"{name}: {task.parity_line(p)}"
