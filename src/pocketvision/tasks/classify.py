"""Classification as a task plug-in: loss, class weights, probe head, export signature."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..contract import Contract

TASK = "classify"
OUTPUTS = ("probabilities", "logits")


def class_weights(counts: list[int], mode) -> torch.Tensor | None:
    """'auto': inverse frequency normalised to mean 1 (the Not Hotdog data was 49:1)."""
    if mode == "none":
        return None
    if isinstance(mode, list):
        return torch.tensor(mode, dtype=torch.float32)
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    w = c.sum() / (len(c) * c)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def final_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError("model has no nn.Linear classifier")
    return linears[-1]


def fit_probe(train_f: np.ndarray, train_y: np.ndarray, num_classes: int, balanced: bool, C: float = 0.5):
    """Logistic regression on frozen pooled features -> (W, b) for the model's own classifier.

    Standardisation is folded back into W and b so the head takes raw features, as in the graph.
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced" if balanced else None)
    clf.fit((train_f - mu) / sd, train_y)
    coef, icpt = clf.coef_, clf.intercept_
    if num_classes == 2 and coef.shape[0] == 1:  # sklearn's binary form: one logit -> split +-z/2
        coef = np.concatenate([-coef / 2, coef / 2])
        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
    full_w = np.zeros((num_classes, train_f.shape[1]))
    full_b = np.full(num_classes, -1e4)  # a class absent from training can never win
    full_w[clf.classes_], full_b[clf.classes_] = coef / sd, icpt - (coef / sd) @ mu
    return torch.tensor(full_w, dtype=torch.float32), torch.tensor(full_b, dtype=torch.float32)


class ExportWrapper(nn.Module):
    """uint8 RGB NHWC pixels -> (probabilities, logits): the preprocessing contract inside the graph."""

    def __init__(self, model: nn.Module, contract: Contract):
        super().__init__()
        self.model = model
        # Scalars when the channels agree (most contracts): a per-channel [1,3,1,1] constant makes
        # onnxruntime broadcast over a 3-wide axis once int8 kernels move the tensor to NHWC, which
        # cost 1.5 ms of an 8 ms EfficientNet-Lite0.
        same = len(set(contract.mean)) == 1 and len(set(contract.std)) == 1
        shape = () if same else (1, 3, 1, 1)
        mean = torch.tensor(contract.mean[:1] if same else contract.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(contract.std[:1] if same else contract.std, dtype=torch.float32).view(shape)
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        logits = self.model(x)
        return torch.softmax(logits, dim=1), logits
