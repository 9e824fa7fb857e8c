"""A starter page: a pretrained network alone as a teachable web page with no classes of its own, every class taught
in the browser (``pocketvision starter OUT.web``): a model created in the page. Its "download what I taught" file
comes back with ``pocketvision import`` and ``pocketvision train``.

The page's embedding is checked against the network's in torch, in Chromium, before the folder appears.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.contract import is_image_file
from ..core.pixels import load_pixels
from ..errors import PocketVisionError
from ..runtime.web_predictor import WebPredictor
from ..tasks.base import OutputSpec, Task
from .base import publish, staged
from .onnx import export_onnx
from .web import export_web, runtime_dir

CHECK_PHOTOS = 32
MIN_COSINE = 0.9999  # the page's embedding against torch's, every photo (float: the same maths)


@dataclass
class _Graph:
    """What ``export_onnx`` asks of a task, for a graph body that already returns the outputs."""

    outputs: OutputSpec

    def graph_model(self, model: Any, teachable: bool = False) -> Any:
        return model

    def graph_head(self, y: Any) -> tuple:
        return y


def starter_page(task: Task, arch: str, out: str | os.PathLike, data: str | os.PathLike | None = None,
                 log=lambda s: None) -> dict[str, Any]:
    """Write the starter page ``out`` for ``task`` (a teachable one) on ``arch``; up to 32 photos under ``data``
    check its embedding, else a fixed set of generated images does."""
    import torch

    out = Path(out)
    runtime_dir()  # the runtime files are needed: say so before the graph export
    if data is not None and not Path(data).is_dir():
        raise PocketVisionError(f"{data}: not a folder; --data is a folder of photos to check the page with.")
    s = task.starter(arch)
    pixels = None
    if data is not None:
        photos = sorted(p for p in Path(data).rglob("*") if is_image_file(p))[:CHECK_PHOTOS]
        if not photos:
            raise PocketVisionError(f"{data}: no photos to check the page with; give a folder of photos.")
        pixels, _ = load_pixels(photos, s.contract)
    if pixels is None:  # no photos given: smooth gradients and noise, the same every time
        h, w = s.contract.size
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
        pixels = np.stack([np.clip(ramp * (i + 1) / 8 + rng.normal(0, 20 * i, (h, w, 3)), 0, 255)
                           for i in range(8)]).astype(np.uint8)
    with torch.no_grad():
        want = s.model(torch.from_numpy(s.contract.normalize(pixels)))[-1].numpy()
    with staged(out) as (stage, scratch):
        log(f"exporting {arch}'s embedding ({s.meta['teach']['features']} features) to a web page ...")
        onnx_path = export_onnx(s.model, s.contract, _Graph(s.outputs), s.meta, scratch / "model.onnx")
        export_web(onnx_path, s.meta, stage, s.outputs, title=f"pocketvision: teach {arch} your own classes")
        log("checking the page's embedding in Chromium ...")
        with WebPredictor(stage) as web:
            got = web.run_pixels(pixels)
        cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
        if got.shape != want.shape or cos.min() < MIN_COSINE:
            raise PocketVisionError(f"the starter page's embedding differs from {arch}'s (least cosine "
                                    f"{cos.min():.6f} < {MIN_COSINE}); nothing was written to {out}.")
        publish(stage, out)
    return {"path": str(out), "arch": arch, "features": s.meta["teach"]["features"], "images": len(pixels),
            "min_cosine": float(cos.min()), "size_mb": round(sum(f.stat().st_size for f in out.rglob("*")
                                                                 if f.is_file()) / 1e6, 2)}
