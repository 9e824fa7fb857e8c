"""Parity: the same real images through the source model and an exported file (DESIGN.md section 3).

The comparison itself is the task's (probabilities, pixel coordinates, PSNR); the target decides whether its
runtime runs here (numeric parity) or only a structural check is possible (Core ML off macOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PocketVisionError
from ..pixels import batched, load_pixels  # noqa: F401  (load_pixels: the earlier home of this helper)


class NoImages(PocketVisionError):
    """Parity needs real images and there are none."""


def verify_export(bundle, exported: str | Path, data: str | Path | None = None, tolerance: float | None = None,
                  precision: str | None = None, max_drop: float = 1.0, target=None) -> dict[str, Any]:
    """``target``: the export target that wrote ``exported`` (default: recognised from the path)."""
    from .base import target_for_path
    task = bundle.plugin
    target = target or target_for_path(exported)
    structural = target.inspect(exported, bundle.export_meta(), task)
    if structural is not None:
        return {**structural, "file": str(exported)}
    held = bundle.held_out(data)
    if not len(held.pixels):
        raise NoImages("verify needs real images: pass --data DIR (labelled data of the model's task).")
    cand = target.open(exported)
    try:
        if cand.labels != bundle.labels:
            raise PocketVisionError(f"{exported}: labels {cand.labels} differ from the bundle's {bundle.labels}.")
        precision = precision or cand.meta.get("precision", "fp32")
        ref = batched(bundle.predict_pixels, held.pixels)
        out = batched(cand.run_pixels, held.pixels)
    finally:
        cand.close()
    v = task.compare(ref, out, held.truth, bundle.meta, tolerance)
    if precision != "fp32" and tolerance is None:  # outputs move by design: judged by the budget
        v["passed"] = bool(v["n"] and task.within_budget(v["reference_quality"], v["candidate_quality"], max_drop))
        v["criterion"] = task.budget_text(precision, max_drop)
    v["file"] = str(exported)
    return v
