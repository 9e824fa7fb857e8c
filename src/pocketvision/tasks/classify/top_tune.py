"""Fine-tune the top of a pretrained network on cached trunk activations.

On a 2-core CPU a full EfficientNet-Lite0 fine-tune runs at ~17 img/s (65 s an epoch on the hotdog
set), so a few epochs already blow a 5-minute budget. The early layers change least in transfer
learning anyway; freezing them (BN included) means their output for a given image never changes, so
it is computed once per view (the image and its mirror) and the last blocks + classifier are trained
for many cheap epochs on those activations. The same result as fine-tuning those blocks with
flip augmentation, at a fraction of the cost.

Views beyond the photo and its mirror are augmented crops (the run's ``--augment``: crop, colour, glare, moire).
Each costs one trunk pass when the cache is built, not epoch time: an epoch draws as many samples as two views
of every photo, from the whole pool.

``TopTune`` holds the caches and gives the engine what a task run gives it (``batches``, ``forward``,
``param_groups``): the epochs themselves run in the one training engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ...core.contract import Contract
from ...training.distributed import local_batch


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

    def forward(self, a: torch.Tensor, features: bool = False, imagenet: bool = False):
        """-> logits; pooled features with ``features``; (logits, the 1000 ImageNet logits) with ``imagenet``
        (a head that keeps them: ``models/imagenet_head.py``)."""
        f = torch.flatten(self.model.pool(self.top(a)), 1)
        if features:
            return f
        if imagenet:
            return self.model.classifier.both(self.model.head_drop(f))
        return self.model.forward_head(f)


class TopTune:
    """The frozen trunk's activations of every view of the training images and of the validation images, and the
    ``TopNet`` that trains on them. ``views`` yields one uint8 NHWC array per view, all in the order of
    ``train_y``; the first is the photos as the contract fits them (what a linear probe fits)."""

    PER_EPOCH = 2  # samples an epoch draws per photo: the photo and its mirror, as before views were pooled

    def __init__(self, model: nn.Module, blocks: int, views: Iterable[np.ndarray], train_y: np.ndarray,
                 val_px: np.ndarray, val_y: np.ndarray, contract: Contract, *, seed: int):
        torch.manual_seed(seed)
        k = len(model.features) - blocks
        self.trunk = model.features[:k]
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        t0 = time.perf_counter()
        # a view may come as the trunk's output already (computed once for another purpose)
        acts = [v if isinstance(v, torch.Tensor) else trunk_activations(self.trunk, v, contract) for v in views]
        self.acts = torch.cat(acts)
        self.val_acts = trunk_activations(self.trunk, val_px, contract)
        self.train_y, self.val_y = train_y, val_y
        self.ys = torch.from_numpy(np.concatenate([train_y] * len(acts))).long()
        self.cached, self.cache_seconds = len(self.acts), time.perf_counter() - t0
        self.per_epoch = min(len(self.acts), self.PER_EPOCH * len(train_y))
        self.net = TopNet(model, k)
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0  # epochs' orders drawn from the generator

    @torch.no_grad()
    def run(self, a: torch.Tensor, features: bool = False) -> np.ndarray:
        self.net.eval()
        return torch.cat([self.net(a[i:i + 256].float(), features) for i in range(0, len(a), 256)]).numpy()

    def features(self) -> np.ndarray:
        """Pooled features of the (un-mirrored) training images: what a linear probe fits."""
        return self.run(self.acts[: len(self.train_y)], features=True)

    def param_groups(self, lr: float) -> list[dict]:
        head_ids = {id(p) for p in self.model.head_parameters()}
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [{"params": [p for p in params if id(p) not in head_ids], "lr": lr, "name": "top"},
                {"params": [p for p in params if id(p) in head_ids], "lr": lr * 3, "name": "head"}]

    def steps(self, batch_size: int, shard: tuple[int, int] = (0, 1)) -> int:
        per_process, b = -(-self.per_epoch // shard[1]), local_batch(batch_size, shard)
        return -(-per_process // b)

    def batches(self, batch_size: int, shard: tuple[int, int] = (0, 1), epoch: int | None = None):
        """Index batches; with ``shard=(rank, world)`` this process's share (see ``loader.EpochSampler``). A run
        resumed at ``epoch`` first draws the orders of the epochs it skipped: it then sees the batches that the
        uninterrupted run would have."""
        while epoch is not None and self.drawn < epoch - 1:
            self._order(shard)
        return self._order(shard).split(local_batch(batch_size, shard))

    def _order(self, shard: tuple[int, int]) -> torch.Tensor:
        # With two views (the photo and its mirror) this is every sample once, as it always was.
        order = torch.randperm(len(self.acts), generator=self.generator)[: self.per_epoch]
        self.drawn += 1
        rank, world = shard
        if world > 1:
            n = -(-len(order) // world) * world
            order = order.repeat(-(-n // len(order)))[:n][rank::world]
        return order

    def forward(self, net: nn.Module, idx: torch.Tensor, imagenet: bool = False):
        return net(self.acts[idx].float(), imagenet=imagenet) if imagenet else net(self.acts[idx].float())

    def photo(self, idx: torch.Tensor) -> torch.Tensor:
        """The photo each sample is a view of (samples are stored view by view)."""
        return idx % len(self.train_y)

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.ys[idx]

    def release(self) -> None:
        for p in self.trunk.parameters():
            p.requires_grad_(True)
