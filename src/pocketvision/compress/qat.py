"""Quantisation-aware fine-tuning: teach the float weights to survive int8 before static quantisation.

BatchNorm is folded first (``palettize.fold_batchnorm_``, architecture unchanged), because the folded
weights are what int8 export quantises. Then every Conv/Linear weight is fake-quantised per output
channel (symmetric int8) and every Conv/Linear output per tensor (asymmetric uint8, running min/max),
with straight-through gradients, while the model is distilled from its float self on training photos.
The fake quantisers are removed afterwards: the result is a float model whose weights and activation
ranges int8 represents well, exported and calibrated as usual (``quantize.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class _WeightFakeQuant(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.detach().flatten(1).abs().amax(1).clamp_min(1e-8)
        scale = (flat / 127.0).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _ActFakeQuant:
    """Forward hook: uint8 fake quantisation of a layer's output with running min/max (momentum 0.9)."""

    def __init__(self) -> None:
        self.lo, self.hi = None, None

    def __call__(self, module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
        lo, hi = float(out.detach().amin()), float(out.detach().amax())
        self.lo = lo if self.lo is None else 0.9 * self.lo + 0.1 * lo
        self.hi = hi if self.hi is None else 0.9 * self.hi + 0.1 * hi
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero = int(round(-lo / scale))
        return torch.fake_quantize_per_tensor_affine(out, scale, min(max(zero, 0), 255), 0, 255)


def qat_finetune(model: nn.Module, batches: Callable[[int], torch.Tensor], steps: int, lr: float = 1e-4,
                 temperature: float = 2.0) -> nn.Module:
    """-> a float copy of ``model`` fine-tuned under int8 fake quantisation (BN folded).
    ``batches(step)`` gives a normalised input batch (N, C, H, W)."""
    from .palettize import fold_batchnorm_

    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()
    fold_batchnorm_(student)
    layers = [m for m in student.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = []
    for m in layers:
        parametrize.register_parametrization(m, "weight", _WeightFakeQuant())
        hooks.append(m.register_forward_hook(_ActFakeQuant()))
    # Only weights move; BN (now identity + shift) and its statistics stay as folded.
    params = [m.parametrizations.weight.original for m in layers]
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        x = batches(step)
        with torch.no_grad():
            target = F.softmax(teacher(x) / temperature, dim=1)
        loss = F.kl_div(F.log_softmax(student(x) / temperature, dim=1), target, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in hooks:
        h.remove()
    for m in layers:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return student.eval()
