"""The input pipeline: each epoch's augmentation really is new, also in persistent worker processes."""

from __future__ import annotations

import pytest

from pocketvision.core.contract import Contract
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


@pytest.mark.shared_data
def test_a_worker_forked_after_opencv_ran_does_not_hang(shared_data):
    """OpenCV's thread pool does not survive fork(): a DataLoader worker forked after OpenCV ran in the parent hung
    on its first colour jitter, forever (it stalled a whole CI run). In a fresh process, with a timeout."""
    import subprocess
    import sys
    code = f"""
import numpy as np, cv2
x = np.random.rand(1500, 1500, 3).astype(np.float32)
for _ in range(3):
    cv2.transform(x, np.eye(3, dtype=np.float32)); cv2.resize(x, (300, 300))
from pocketvision.core.contract import Contract
from pocketvision.data.augment import AugmentConfig, Augmenter
from pocketvision.data.folder import scan
from pocketvision.training.loader import ImageDataset, make_loader
c = Contract(size=(64, 64))
ds = ImageDataset(scan({str(shared_data / 'hotdog')!r}).train[:8], c, Augmenter(AugmentConfig(), c), seed=0)
print(tuple(next(iter(make_loader(ds, 8, True, workers=1, seed=0)))[0].shape))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(8, 64, 64, 3)" in r.stdout, r.stderr[-2000:]
