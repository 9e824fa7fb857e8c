"""How unlike the training photos a photo is: one number per prediction, computed inside the network.

A model is confidently wrong on photos unlike the ones it learned from, and those are the photos users bring
(other photographers, other phones, other dishes). ``Familiarity`` scores each photo by two things a device can
compute with no photo leaving it:

- how far its features are from the training photos: the cosine distance of its pooled features to the nearest of
  ``k`` centres (k-means of the training photos' features; 16 x 1280 numbers for EfficientNet-Lite0, 82 KB);
- how unsure the model is: one minus its top probability.

Each is standardised by its distribution on the val photos and the two are added: 0 is a typical val photo, 2 is
two standard deviations less familiar on both. The bundle stores the val distribution of the sum, so a score can be
read as "more unfamiliar than 95% of the val photos". Measured on food-shift (benchmarks/RESULTS.md): the sum
ranks the defaults' wrong answers above their right ones at ROC-AUC 0.79 (uncertainty alone 0.78, distance
alone 0.59).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CENTRES = 16


class Familiarity(nn.Module):
    """(pooled features, class probabilities) -> unfamiliarity, standardised on val (buffers only: no training)."""

    def __init__(self, k: int, features: int):
        super().__init__()
        self.register_buffer("centres", torch.zeros(k, features))  # unit vectors
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))  # distance mean, sd; uncertainty mean, sd

    def distance(self, f: torch.Tensor) -> torch.Tensor:
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return 1.0 - (f @ self.centres.t()).amax(dim=1)

    def forward(self, f: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        d = (self.distance(f) - self.stats[0]) / self.stats[1]
        u = (1.0 - probs.amax(dim=1) - self.stats[2]) / self.stats[3]
        return d + u


def fit_familiarity(train_f: np.ndarray, val_f: np.ndarray, val_probs: np.ndarray, k: int = CENTRES,
                    seed: int = 0) -> tuple[Familiarity, np.ndarray]:
    """k-means centres of the training features; the two parts standardised on val. -> (module, val scores)."""
    from sklearn.cluster import KMeans
    x = train_f / np.maximum(np.linalg.norm(train_f, axis=1, keepdims=True), 1e-6)
    k = max(1, min(k, len(x)))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    centres = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-6)
    fam = Familiarity(k, train_f.shape[1])
    with torch.no_grad():
        fam.centres.copy_(torch.from_numpy(centres).float())
        d = fam.distance(torch.from_numpy(val_f).float()).numpy()
        u = 1.0 - val_probs.max(1)
        fam.stats.copy_(torch.tensor([d.mean(), max(d.std(), 1e-3), u.mean(), max(u.std(), 1e-3)]))
        scores = fam(torch.from_numpy(val_f).float(), torch.from_numpy(val_probs).float()).numpy()
    return fam, scores


def val_record(scores: np.ndarray) -> dict:
    """What the bundle keeps of the val photos' scores: enough to say "more unfamiliar than X% of val"."""
    qs = [0.5, 0.9, 0.95, 0.99]
    return {"centres": None, "val_quantiles": {str(q): float(np.quantile(scores, q)) for q in qs},
            "flag_above": float(np.quantile(scores, 0.95)), "val_n": int(len(scores))}


class WithUnfamiliar(nn.Module):
    """A classifier's graph body that returns (logits, unfamiliarity[, embedding]): what an export captures."""

    def __init__(self, model: nn.Module, embedding: bool = False):
        super().__init__()
        self.model, self.embedding = model, embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.forward_with_unfamiliar(x, self.embedding)
