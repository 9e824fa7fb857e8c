"""Run an exported ``.onnx`` with nothing but numpy + Pillow + onnxruntime (no torch import).

Everything needed (task, labels, preprocessing contract, threshold) is read from the model's own
``metadata_props``, so the file alone is enough.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PocketVisionError
from .predictor import Predictor, parse_metadata


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise PocketVisionError("onnxruntime is not installed: pip install 'pocketvision[runtime]'") from None
    return ort


# Execution providers a CPU build of onnxruntime can offer, by the name `bench --pick` uses.
PROVIDERS = {"xnnpack": "XnnpackExecutionProvider"}


def accelerators() -> tuple[str, ...]:
    """The ways this machine's onnxruntime can run a model: the CPU provider, and XNNPACK where it was built in."""
    have = _ort().get_available_providers()
    return ("cpu",) + tuple(k for k, v in PROVIDERS.items() if v in have)


class OnnxPredictor(Predictor):
    def __init__(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        ort = _ort()
        self.path = Path(path)
        if not self.path.exists():
            raise PocketVisionError(f"{self.path}: model file not found.")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if accelerator not in (None, "cpu"):
            name = PROVIDERS.get(accelerator)
            if name is None or name not in ort.get_available_providers():
                raise PocketVisionError(f"onnxruntime provider {accelerator!r} is not available here (this "
                                        f"onnxruntime has: {', '.join(accelerators())}).")
            # XNNPACK runs the ops it has and leaves the rest to the CPU provider; it takes its own threads
            providers = [(name, {"intra_op_num_threads": str(threads or 1)}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for bad files
            raise PocketVisionError(f"{self.path}: onnxruntime cannot load this model ({str(e).splitlines()[0]}).") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self._read_meta(parse_metadata(meta, self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        hw = inp.shape[1:3]
        self.input_size = tuple(hw) if all(isinstance(d, int) for d in hw) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return dict(zip(self.output_names, outs))

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> the graph's first output (probabilities, keypoints, an image...)."""
        return self.session.run(self.output_names[:1], {self.input_name: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
