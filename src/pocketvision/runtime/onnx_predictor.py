"""Run an exported ``.onnx`` with nothing but numpy + Pillow + onnxruntime (no torch import).

Everything needed (labels, preprocessing contract, threshold) is read from the model's own
``metadata_props``, so the file alone is enough.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Contract
from ..errors import PocketVisionError
from .decision import decide

META_PREFIX = "pocketvision."


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise PocketVisionError("onnxruntime is not installed: pip install 'pocketvision[runtime]'") from None
    return ort


class OnnxPredictor:
    def __init__(self, path: str | Path, threads: int | None = None):
        ort = _ort()
        self.path = Path(path)
        if not self.path.exists():
            raise PocketVisionError(f"{self.path}: model file not found.")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for bad files
            raise PocketVisionError(f"{self.path}: onnxruntime cannot load this model ({str(e).splitlines()[0]}).") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in meta.items() if k.startswith(META_PREFIX)}
        if "contract" not in self.meta or "labels" not in self.meta:
            raise PocketVisionError(f"{self.path}: no pocketvision metadata (contract/labels); "
                                    "export it with `pocketvision export`.")
        self.contract = Contract.from_dict(self.meta["contract"])
        self.labels: list[str] = self.meta["labels"]
        self.threshold: dict[str, Any] | None = self.meta.get("threshold")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC at the contract's size -> probabilities (N, C) or keypoints (N, K, 3)."""
        return self.session.run(self.output_names[:1], {self.input_name: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]

    def predict(self, sources: list[str | os.PathLike | bytes]) -> list[dict[str, Any]]:
        if self.meta.get("task") == "keypoints":
            from .keypoint_runtime import predict_keypoints
            return predict_keypoints(self.run_pixels, self.contract, self.labels, sources)
        pixels = np.stack([self.contract.load(s) for s in sources])
        return decide(self.run_pixels(pixels), self.labels, self.threshold)
