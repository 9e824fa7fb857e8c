"""Parameter, MAC and size accounting -- the numbers a mobile developer chooses an architecture by."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import build_model, check_input_size, model_entry


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, size: tuple[int, int] | int = (224, 224), in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a single ``size`` = (h, w) image.

    Conv2d: each output element costs (in_channels / groups) * kh * kw MACs, so a depthwise conv costs
    kh * kw per output element, not in_channels times that. Linear: in * out per row. BN, activations,
    pooling and additions are not counted (the convention of the published MAC figures).
    """
    h, w = (size, size) if isinstance(size, int) else size
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()  # BN in train mode would update running stats from a dummy input
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(1, in_channels, h, w, device=p.device if p is not None else "cpu"))
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return total


def weight_bytes(model: nn.Module) -> int:
    """fp32 bytes of parameters + floating buffers (BN running stats): the size of an fp32 export.
    Integer bookkeeping buffers (BN ``num_batches_tracked``) are not exported, so they are left out."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return 4 * sum(t.numel() for t in tensors)


def model_info(name: str, size: tuple[int, int] | int = (224, 224), **args: Any) -> dict[str, Any]:
    """Params, MACs and fp32 weight size of ``name`` built with ``args`` at ``size``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    check_input_size(name, hw, args)
    entry = model_entry(name)
    model = build_model({"name": name, "args": args})
    return {
        "name": name,
        "args": model.spec["args"],
        "size": hw,
        "params": count_params(model),
        "macs": count_macs(model, hw),
        "weight_mb": weight_bytes(model) / 1e6,
        "default_contract": dict(entry.default_contract),
        "min_size": entry.min_size,
        "size_multiple": entry.size_multiple,
        "pretrained": entry.pretrained,
    }
