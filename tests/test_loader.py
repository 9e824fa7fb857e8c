"""The input pipeline: each epoch's augmentation really is new, also in persistent worker processes."""

from __future__ import annotations

import pytest

from pocketvision.contract import Contract
from pocketvision.data.augment import AugmentConfig, Augmenter
from pocketvision.data.folder import scan
from pocketvision.training.loader import ImageDataset, make_loader


@pytest.mark.shared_data
def test_workers_see_each_epoch(shared_data):
    # Workers keep the dataset copy they started with; the epoch must reach them through the sampler,
    # or every epoch replays epoch 1's crops and flips (the bug this guards against).
    c = Contract(size=(64, 64))
    ds = ImageDataset(scan(shared_data / "hotdog").train[:8], c, Augmenter(AugmentConfig(), c), seed=0)
    loader = make_loader(ds, 8, True, workers=1, seed=0)
    batches = {}
    for epoch in (1, 2, 1):
        ds.set_epoch(epoch)
        x, _, idx = next(iter(loader))
        batches.setdefault(epoch, []).append(x[idx.argsort()])
    assert not (batches[1][0] == batches[2][0]).all()  # a new epoch, new augmentation
    assert (batches[1][0] == batches[1][1]).all()  # the same epoch again (resume): the same pixels


@pytest.mark.shared_data
def test_progressive_sizes_reach_persistent_workers(shared_data):
    # The size schedule is fixed before the workers start; each key carries its epoch, so a worker started in
    # epoch 1 still makes epoch 3's size.
    c = Contract(size=(64, 64))
    sizes = {1: (32, 32), 2: (48, 48), 3: (64, 64)}
    ds = ImageDataset(scan(shared_data / "hotdog").train[:8], c, Augmenter(AugmentConfig(glare=1, moire=1), c),
                      seed=0, sizes=sizes)
    loader = make_loader(ds, 8, True, workers=1, seed=0)
    for epoch in (1, 2, 3, 1):
        ds.set_epoch(epoch)
        x, _, _ = next(iter(loader))
        assert tuple(x.shape) == (8, *sizes[epoch], 3), (epoch, x.shape)
