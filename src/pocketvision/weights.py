"""Weights in and out of safetensors (never pickle: loading a stranger's bundle must not run code)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import BundleError, PocketVisionError


def build_for_weights(task, arch: dict[str, Any], contract, weights: bytes, where: str) -> nn.Module:
    """``task.build_model(arch, contract)`` for a bundle from elsewhere: the architecture in its bundle.json is built
    first on the meta device (no memory), and refused unless its tensors fit the weights that came with it — an
    ``arch`` of width 10^6 would otherwise allocate terabytes before the weights could say it is wrong."""
    import torch
    try:
        with torch.device("meta"):
            probe = task.build_model(arch, contract)
    except PocketVisionError as e:
        raise BundleError(f"{where}: bundle.json 'arch': {e}") from None
    except Exception as e:  # noqa: BLE001 - garbage arch args raise anything: TypeError, ValueError, ...
        raise BundleError(f"{where}: bundle.json 'arch' cannot be built ({str(e).splitlines()[0][:200]}).") from None
    need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    if need > len(weights) + 2**20:  # safetensors stores every tensor of the state dict (+ a small header)
        raise BundleError(f"{where}: bundle.json 'arch' needs {need:,} bytes of weights but the bundle has "
                          f"{len(weights):,}; refused before building it.")
    return task.build_model(arch, contract)


def load_weights(model: nn.Module, weights: bytes, where: str, arch: dict[str, Any]) -> nn.Module:
    """safetensors bytes -> ``model``'s state; a mismatch is the bundle's problem, said in one line."""
    from safetensors.torch import load as st_load
    try:
        model.load_state_dict(st_load(weights))
    except Exception as e:  # noqa: BLE001 - wrong shapes/keys = a bundle that does not match its spec
        raise BundleError(f"{where}: weights do not fit the architecture {arch.get('name')} "
                          f"({str(e).splitlines()[0]}).") from None
    return model


def state_bytes(model: nn.Module) -> bytes:
    from safetensors.torch import save as st_save
    return st_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
