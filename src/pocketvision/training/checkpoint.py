"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.bundle_file import atomic_write_bytes
from ..errors import PocketVisionError

CKPT_TENSORS, CKPT_META = "checkpoint.safetensors", "checkpoint.json"


def _split_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        plain["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain["state"][str(pid)][k] = v
    return tensors, plain


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    plain: dict = {}
    if optimizer is not None:
        t, plain = _split_optimizer(optimizer.state_dict())
        tensors.update(t)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Tensors first, then the JSON that points at them: a crash between the two leaves the previous
    # JSON describing the previous epoch, which resume then redoes.
    atomic_write_bytes(run_dir / CKPT_TENSORS, st_save(tensors))
    atomic_write_bytes(run_dir / CKPT_META, json.dumps({**meta, "optimizer": plain}, default=str).encode())


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """-> (model state_dict, optimizer-state pieces, meta)."""
    meta_p, tens_p = run_dir / CKPT_META, run_dir / CKPT_TENSORS
    if not meta_p.exists() or not tens_p.exists():
        raise PocketVisionError(f"{run_dir}: no checkpoint to resume from (expected {CKPT_META} and {CKPT_TENSORS}).")
    try:
        meta = json.loads(meta_p.read_text())
        tensors = st_load(tens_p.read_bytes())
    except Exception as e:  # noqa: BLE001 - a broken checkpoint is one user-facing problem
        raise PocketVisionError(f"{run_dir}: checkpoint is corrupt ({e}). Start a new run.") from None
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    opt = meta.pop("optimizer", {})
    if opt:
        state: dict = {}
        for pid, plain in opt.get("state", {}).items():
            state[int(pid)] = dict(plain)
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        opt = {"state": state, "param_groups": opt["param_groups"]}
    return model_sd, opt, meta
