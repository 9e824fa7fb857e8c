"""Fine-tune the top of a pretrained network on cached trunk activations.

On a 2-core CPU a full EfficientNet-Lite0 fine-tune runs at ~17 img/s (65 s an epoch on the hotdog
set), so a few epochs already blow a 5-minute budget. The early layers change least in transfer
learning anyway; freezing them (BN included) means their output for a given image never changes, so
it is computed once per view (the image and its mirror) and the last blocks + classifier are trained
for many cheap epochs on those activations. The same result as fine-tuning those blocks with
flip augmentation, at a fraction of the cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contract import Contract
from ..tasks.classify import final_linear


def supports_top_tune(model: nn.Module, blocks: int) -> bool:
    feats = getattr(model, "features", None)
    return isinstance(feats, nn.Sequential) and 0 < blocks < len(feats) and hasattr(model, "forward_head")


@torch.no_grad()
def trunk_activations(trunk: nn.Module, pixels: np.ndarray, contract: Contract, batch: int = 64) -> torch.Tensor:
    """uint8 NHWC -> trunk output, stored fp16 (half the RAM; the top trains in fp32)."""
    trunk.eval()
    out = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(contract.normalize(np.ascontiguousarray(pixels[i:i + batch])))
        out.append(trunk(x.contiguous(memory_format=torch.channels_last)).to(torch.float16))
    return torch.cat(out)


class TopNet(nn.Module):
    """features[k:] + pool + head of a ClassifierNet, sharing its modules (weights train in place)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.top = model.features[k:]
        self.model = model

    def forward(self, a: torch.Tensor, features: bool = False) -> torch.Tensor:
        f = torch.flatten(self.model.pool(self.top(a)), 1)
        return f if features else self.model.forward_head(f)


def top_tune(model: nn.Module, blocks: int, train_px: np.ndarray, train_y: np.ndarray, val_px: np.ndarray,
             val_y: np.ndarray, contract: Contract, *, epochs: int, lr: float, weight_decay: float,
             label_smoothing: float, class_weights: torch.Tensor | None, seed: int,
             probe: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None,
             log: Callable[[dict], None], batch_size: int = 64) -> dict:
    """-> {"best_epoch", "best_probs", "history"}; the model ends holding the best weights.

    Epoch 0 is the linear probe (when ``probe`` is given): the head starts from the exact
    logistic-regression solution, and fine-tuning is kept only where it beats it on validation.
    """
    torch.manual_seed(seed)
    k = len(model.features) - blocks
    trunk = model.features[:k]
    for p in trunk.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    # the image and its mirror; a probe-only run (epochs=0) needs just the image
    views = np.concatenate([train_px, train_px[:, :, ::-1]]) if epochs else train_px
    acts = trunk_activations(trunk, views, contract)
    val_acts = trunk_activations(trunk, val_px, contract)
    ys = torch.from_numpy(np.concatenate([train_y] * (len(views) // len(train_y)))).long()
    net = TopNet(model, k)
    cache_s = time.perf_counter() - t0

    @torch.no_grad()
    def run(a: torch.Tensor, features: bool = False) -> np.ndarray:
        net.eval()
        return torch.cat([net(a[i:i + 256].float(), features) for i in range(0, len(a), 256)]).numpy()

    def score(logits: np.ndarray) -> tuple[np.ndarray, float, float]:
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        acc = float((probs.argmax(1) == val_y).mean())
        loss = float(-np.log(np.clip(probs[np.arange(len(val_y)), val_y], 1e-7, 1)).mean())
        return probs, acc, loss

    history, best, best_state, best_epoch, best_probs = [], None, None, 0, None
    if probe is not None:
        W, b = probe(run(acts[: len(train_px)], features=True), train_y)
        head = final_linear(model)
        with torch.no_grad():
            head.weight.copy_(W)
            head.bias.copy_(b)
        probs, acc, loss = score(run(val_acts))
        best, best_probs = (acc, -loss), probs
        best_state = {k_: v.clone() for k_, v in model.state_dict().items()}
        row = {"epoch": 0, "phase": "probe", "train_loss": float("nan"), "val_loss": loss, "val_acc": acc,
               "lr": 0.0, "img_per_s": len(views) / max(cache_s, 1e-9), "seconds": time.perf_counter() - t0}
        history.append(row)
        log(row)

    head_ids = {id(p) for p in model.head_parameters()}
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": lr},
              {"params": [p for p in params if id(p) in head_ids], "lr": lr * 3}]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    steps = max(1, epochs * ((len(acts) + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr * 3], total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        net.train()
        for m in net.modules():  # BN statistics stay the pretrained ones: small data, small batches
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        t_ep, seen, loss_sum = time.perf_counter(), 0, 0.0
        for idx in torch.randperm(len(acts), generator=g).split(batch_size):
            logits = net(acts[idx].float())
            loss = F.cross_entropy(logits, ys[idx], weight=class_weights, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        probs, acc, vloss = score(run(val_acts))
        row = {"epoch": epoch, "phase": "top", "train_loss": loss_sum / seen, "val_loss": vloss, "val_acc": acc,
               "lr": sched.get_last_lr()[0], "img_per_s": seen / (time.perf_counter() - t_ep),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        improved = best is None or (acc, -vloss) > best
        row["best"] = improved
        log(row)
        if improved:
            best, best_epoch, best_probs = (acc, -vloss), epoch, probs
            best_state = {k_: v.clone() for k_, v in model.state_dict().items()}
    for p in trunk.parameters():
        p.requires_grad_(True)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "best_probs": best_probs, "history": history}
