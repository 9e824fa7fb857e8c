"""Evaluate/predict for anything that maps uint8 pixels to probabilities (torch-free).

A bundle (torch) and an exported file (onnxruntime) share this code, so their metrics are computed
identically and differ only by what the models themselves do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Contract
from ..errors import PocketVisionError


def evaluate_folder(predict_pixels: Callable[[np.ndarray], np.ndarray], labels: list[str], contract: Contract,
                    bundle_threshold: dict | None, data: str | Path, split: str = "auto",
                    report_dir: str | Path | None = None, threshold: float | None = None,
                    title: str = "model") -> dict[str, Any]:
    from ..data.folder import labelled_samples
    from ..evaluate import classification_metrics
    from ..export.verify import batched, load_pixels

    samples, used = labelled_samples(data, labels, split)
    pixels, kept = load_pixels([s.path for s in samples], contract)
    if not kept:
        raise PocketVisionError(f"{data}: none of the {len(samples)} images could be read.")
    y = np.array([samples[i].label for i in kept])
    probs = batched(predict_pixels, pixels)
    thr = threshold if threshold is not None else (bundle_threshold or {}).get("value")
    metrics = classification_metrics(y, probs, labels, threshold=thr)
    metrics.update(data=str(data), split=used, skipped_unreadable=len(samples) - len(kept),
                   # the headline uses the bundle's decision rule (its threshold); argmax for comparison
                   argmax_accuracy=float((probs.argmax(1) == y).mean()))
    if report_dir is not None:
        from ..evaluate import write_report
        metrics["report"] = str(write_report(Path(report_dir), metrics, y, probs, labels,
                                             [samples[i].path for i in kept], title=f"Evaluation: {title}"))
    return metrics


def open_predictor(path: str | Path, threads: int | None = None):
    """An exported artifact's predictor: ``.onnx`` (onnxruntime), ``.tflite`` (LiteRT interpreter) or a web
    folder (the page in Chromium)."""
    from .web_predictor import WebPredictor, is_web_folder
    p = Path(path)
    if is_web_folder(p):
        return WebPredictor(p, threads)
    if p.suffix == ".onnx":
        from .onnx_predictor import OnnxPredictor
        return OnnxPredictor(p, threads)
    if p.suffix == ".tflite":
        from .litert_predictor import LiteRTPredictor
        return LiteRTPredictor(p, threads)
    if p.suffix == ".mlpackage" and p.exists():
        raise PocketVisionError(f"{p}: Core ML models run only on Apple platforms (coremltools on macOS); "
                                "here they are checked structurally by `pocketvision export`.")
    if not p.exists():
        raise PocketVisionError(f"{p}: no such file or folder.")
    raise PocketVisionError(f"{p}: not an exported model pocketvision can run here (.onnx, .tflite or a web folder).")


def is_artifact(path: str | Path) -> bool:
    from .web_predictor import is_web_folder
    return Path(path).suffix in (".onnx", ".tflite", ".mlpackage") or is_web_folder(path)


class Artifact:
    """An exported model (.onnx or web folder) with the same evaluate/predict surface as a Bundle."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.predictor = open_predictor(path, threads)
        self.path = Path(path)

    def predict(self, images: list) -> list[dict[str, Any]]:
        return self.predictor.predict(images)

    def evaluate(self, data, split: str = "auto", report_dir=None, threshold: float | None = None,
                 exclude: set[str] | None = None) -> dict[str, Any]:
        p = self.predictor
        if p.meta.get("task") == "keypoints":
            from .keypoint_runtime import evaluate_keypoints
            return evaluate_keypoints(p.run_pixels, p.contract, p.meta, data, split, report_dir, title=str(self.path),
                                      exclude=exclude)
        return evaluate_folder(p.run_pixels, p.labels, p.contract, p.threshold, data, split, report_dir, threshold,
                               title=str(self.path))

    def close(self) -> None:
        getattr(self.predictor, "close", lambda: None)()

