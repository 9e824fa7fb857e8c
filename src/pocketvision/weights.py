"""Weights in and out of safetensors (never pickle: loading a stranger's bundle must not run code)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import BundleError


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
