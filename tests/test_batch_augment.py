"""Batched augmentation (data/batch_augment.py): the same draws as the per-image path, the same pixels within
rounding, deterministic per seed and epoch whatever the number of workers."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from pocketvision.contract import Contract
from pocketvision.data.augment import AugmentConfig, Augmenter
from pocketvision.data.batch_augment import Sources, augment, pad_sources, stack_draws
from pocketvision.data.folder import scan
from pocketvision.training.loader import ImageDataset, collate_sources, decode_all, decode_source, make_loader

pytestmark = pytest.mark.shared_data


@pytest.mark.parametrize("size", [(96, 96), (72, 112)])
def test_batched_augmentation_reproduces_the_per_image_path(shared_data, size):
    contract = Contract(size=size)
    aug = Augmenter(AugmentConfig(glare=0.5, moire=0.5), contract)
    files = sorted((shared_data / "hotdog" / "train" / "hotdog").glob("*.jpg"))[:24]
    files += sorted((shared_data / "hotdog" / "train" / "not_hotdog").glob("*.jpg"))[:24]
    srcs = [decode_source(f, contract) for f in files]
    draws = [aug.draw(s.shape[1], s.shape[0], np.random.default_rng([0, 3, i])) for i, s in enumerate(srcs)]
    assert any(d.flip for d in draws) and any(d.glare for d in draws) and any(d.moire for d in draws)
    per_image = np.stack([aug.apply(Image.fromarray(s), d) for s, d in zip(srcs, draws)]).astype(np.int16)
    batched = augment(Sources(pad_sources(srcs), stack_draws(draws), size)).numpy().astype(np.int16)
    assert batched.shape == per_image.shape == (len(files), *size, 3)
    diff = np.abs(batched - per_image)
    # the same crops, flips, colours and effects; only Pillow's and grid_sample's resampling differ (measured
    # mean 0.4 of 255, 99th percentile 3; 0.8 and 7 for 72x112, downscaled up to 1.8x in y without antialiasing)
    assert diff.mean() < 1.2 and np.percentile(diff, 99) <= 10, (diff.mean(), np.percentile(diff, 99))
    # each image is its own draw, not its neighbour's: a wrong pairing would be off by tens of levels
    assert all(np.abs(batched[i] - per_image[i]).mean() < 4.0 for i in range(len(files)))


def test_batched_batches_depend_on_seed_and_epoch_not_on_workers(hotdog_small):
    contract = Contract(size=(64, 64))
    splits = scan(hotdog_small, val_fraction=0.15, seed=0)
    samples = list(splits.train)[:40]
    cache, _ = decode_all(samples, lambda p: decode_source(p, contract))
    ds = ImageDataset(samples, contract, Augmenter(AugmentConfig(), contract), seed=5, cache=cache, batched=True)

    def epoch_batches(workers: int, epoch: int):
        ds.set_epoch(epoch)
        loader = make_loader(ds, 16, True, workers, seed=5, collate_fn=functools.partial(collate_sources, augment_mode="bilinear"))
        return [(x.clone(), y.clone()) for x, y, _ in loader]

    a, b, c = epoch_batches(0, 1), epoch_batches(2, 1), epoch_batches(0, 2)
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (64, 64, 3)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))  # a new epoch, new augmentation
