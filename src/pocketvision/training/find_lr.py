"""LR range test (Smith 2015): raise the LR exponentially for a few hundred steps, plot the loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..bundle import atomic_write_bytes
from .config import TrainConfig
from .loader import ImageDataset, _decode_source, decode_all, default_workers, make_loader, to_input
from .loop import _make_optimizer, build, pick_device


def find_lr(data, cfg: TrainConfig, out_png: str | Path, start: float = 1e-6, end: float = 1.0,
            steps: int = 100) -> dict:
    """-> {"suggested_lr", "lrs", "losses", "plot"}; the suggestion is where the loss falls fastest."""
    from ..data.augment import AugmentConfig, Augmenter
    from ..data.folder import scan

    torch.manual_seed(cfg.seed)
    splits = scan(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    model, _, contract = build(cfg, len(splits.classes), None)
    device = pick_device(cfg.device)
    model.to(device).train()
    cache, _ = decode_all(splits.train, lambda p: _decode_source(p, contract))
    keep = [i for i, a in enumerate(cache) if a is not None]
    ds = ImageDataset([splits.train[i] for i in keep], contract, Augmenter(AugmentConfig(**cfg.augment), contract),
                      cfg.seed, [cache[i] for i in keep])
    loader = make_loader(ds, cfg.batch_size, True, default_workers() if cfg.workers is None else cfg.workers, cfg.seed,
                         drop_last=True)
    opt = _make_optimizer(cfg, [{"params": list(model.parameters()), "lr": start}])
    mult = (end / start) ** (1 / max(1, steps - 1))
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    step, epoch = 0, 0
    while step < steps:
        ds.set_epoch(epoch)
        for x, y, _ in loader:
            lr = start * mult**step
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(to_input(x, contract, device, False)), y.to(device),
                                   label_smoothing=cfg.label_smoothing or 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            smooth = 0.9 * smooth + 0.1 * float(loss) if step else float(loss)
            debiased = smooth / (1 - 0.9 ** (step + 1))
            lrs.append(lr)
            losses.append(debiased)
            best = min(best, debiased)
            step += 1
            if step >= steps or debiased > 4 * best or not math.isfinite(debiased):
                step = steps
                break
        epoch += 1
    lg, ls = np.log10(lrs), np.array(losses)
    cut = max(3, int(np.argmin(ls)))  # steepest descent before the minimum
    grad = np.gradient(ls[:cut], lg[:cut]) if cut >= 3 else np.array([0.0])
    suggested = float(lrs[int(np.argmin(grad))]) if len(grad) > 1 else float(lrs[0])

    import matplotlib
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="r", ls="--", label=f"suggested {suggested:.1e}")
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss (smoothed)"), ax.legend()
    ax.set_title("LR range test")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return {"suggested_lr": suggested, "lrs": lrs, "losses": losses, "plot": str(out_png)}
