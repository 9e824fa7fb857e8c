"""Parity: the same real images through the source model and an exported file.

The comparison itself is the task's (probabilities, pixel coordinates, PSNR); the target decides whether its
runtime runs here (numeric parity) or only a structural check is possible (Core ML off macOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    passed = [p["passed"] for p in parts]  # before v, which is also the held-out part, says the whole verdict
    v["passed"] = all(passed)
    v["precision"] = precision
    # compression and retraining record a "stage", search and placement an "op"; the file's words are checked here
    if lineage := [str(s.get("stage") or s.get("op")) for s in meta.get("lineage", [])
                   if isinstance(s, dict) and (s.get("stage") or s.get("op"))]:
        v["lineage"] = lineage
    if not v["passed"]:  # name what broke and by how much, so an expected int8 difference never reads like a bug
        v["broke"] = [_broke(name, p, task, budget, max_drop)
                      for name, p, ok in zip(("held-out photos", "their phone-photo twin"), parts, passed) if not ok]
    v["file"] = str(exported)
    return v


def _broke(name: str, p: dict[str, Any], task, budget: bool, max_drop: float) -> str:
    """'their phone-photo twin: accuracy 0.9519 -> 0.9358 (-1.61 points; the budget allows -1.0)'."""
    if budget and "reference_quality" in p:
        ref, cand = p["reference_quality"], p["candidate_quality"]
        return (f"{name}: {task.outputs.quality} {ref:.4f} -> {cand:.4f} ({100 * (cand - ref):+.2f} points; the "
                f"budget allows -{max_drop:g})")
    return f"{name}: {task.parity_line(p)}"
