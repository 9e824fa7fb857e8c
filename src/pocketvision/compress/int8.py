"""Static int8 for an ONNX export, budgeted on held-out images (the ONNX and web targets call this).

1. export the float graph; 2. optionally fine-tune under fake quantisation (QAT, distilled from the float
model) and export that; 3. quantise (QDQ, per-channel) calibrated on training photos, keeping the worst layers
float until the task's quality on held-out images is within budget (``quantize.quantize_within_budget``).
The reference for the budget is the float model's quality, with or without QAT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..export.base import ExportJob


def quantize_onnx(job: ExportJob, export_fp32: Callable[[nn.Module, Path], Path]) -> None:
    from ..runtime.onnx_predictor import OnnxPredictor
    from .quantize import quantize_within_budget

    task, meta = job.task, job.meta
    fp32 = export_fp32(job.model, job.tmp / "fp32.onnx")
    calibration = job.calibration(256)  # training photos (int8 ranges; QAT batches)
    from .data import budget_quality
    held = job.held_out()
    reference = OnnxPredictor(fp32).run_pixels(held.pixels)  # the float graph's own outputs
    judge = budget_quality(task, meta, held, reference)

    def quality(path: Path) -> float:
        return judge(OnnxPredictor(path).run_pixels(held.pixels))
    base = quality(fp32)
    if job.qat_steps:
        import torch

        from .qat import qat_finetune
        rng = np.random.default_rng(0)
        contract = job.contract

        def batch(step: int) -> torch.Tensor:
            x = calibration[rng.integers(0, len(calibration), 32)].copy()
            flip = rng.random(len(x)) < 0.5
            x[flip] = x[flip, :, ::-1]
            return torch.from_numpy(contract.normalize(x))
        job.log(f"int8: quantisation-aware fine-tuning, {job.qat_steps} steps")
        fp32 = export_fp32(qat_finetune(job.model, batch, job.qat_steps), job.tmp / "qat_fp32.onnx")
    rep = quantize_within_budget(fp32, job.out, calibration, quality, base, job.max_drop, log=job.log,
                                 recipe=task.int8_recipe(fp32),
                                 within=lambda q: task.within_budget(base, q, job.max_drop))
    rep["qat_steps"] = job.qat_steps
    job.report["int8"] = rep
