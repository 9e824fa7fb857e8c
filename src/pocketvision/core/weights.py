"""Weights in and out of safetensors (never pickle: loading a stranger's bundle must not run code)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import BundleError, PocketVisionError


HEADER_SLACK = 2**20  # safetensors stores every tensor of the state dict plus a header (~100 bytes a tensor)


def weight_bytes(task, arch: dict[str, Any], contract, where: str) -> int:
    """The bytes of the state dict ``task.build_model(arch, contract)`` makes, sized on the meta device (no memory:
    an ``arch`` of width 10^6 would otherwise allocate terabytes before the weights could say it is wrong)."""
    import torch
    try:
        with torch.device("meta"):
            probe = task.build_model(arch, contract)
    except PocketVisionError as e:
        raise BundleError(f"{where}: bundle.json 'arch': {e}") from None
    except Exception as e:  # noqa: BLE001 - garbage arch args raise anything: TypeError, ValueError, ...
        raise BundleError(f"{where}: bundle.json 'arch' cannot be built ({str(e).splitlines()[0][:200]}).") from None
    return sum(t.numel() * t.element_size() for t in probe.state_dict().values())


def weights_cap(task_of, where: str):
    """For ``bundle.read``: metadata -> the most bytes its weights may take, the architecture's own size plus the
    header (a 1.9 GB weights file for a 20 MB model is refused before it is read)."""
    from .contract import Contract

    def cap(meta: dict[str, Any]) -> int:
        if meta["arch"].get("name") == "custom":  # the user's own module, passed at load: the reader's cap only
            return 2**62
        return weight_bytes(task_of(meta, where), meta["arch"], Contract.from_dict(meta["contract"]), where) \
            + HEADER_SLACK
    return cap


def build_for_weights(task, arch: dict[str, Any], contract, weights: bytes, where: str) -> nn.Module:
    """``task.build_model(arch, contract)`` for a bundle from elsewhere, refused unless the architecture's tensors fit
    the weights that came with it (sized first on the meta device)."""
    need = weight_bytes(task, arch, contract, where)
    if need > len(weights) + HEADER_SLACK:
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
