"""The cached top fine-tune's pool of views: every view cached once, an epoch the size of two views per photo."""

from __future__ import annotations

import numpy as np
import torch

from pocketvision.core.contract import Contract
from pocketvision.models import build_model
from pocketvision.tasks.classify.top_tune import TopTune


def _top(views: int, seed: int = 0) -> TopTune:
    torch.manual_seed(0)  # the same (random) trunk every time
    model = build_model({"name": "efficientnet_lite0", "args": {"num_classes": 2}}, pretrained=False).eval()
    rng = np.random.default_rng(0)
    n, contract = 6, Contract(size=(64, 64))
    pool = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for _ in range(views)]
    y = np.array([0, 1] * (n // 2))
    return TopTune(model, 2, iter(pool), y, pool[0][:4], y[:4], contract, seed=seed)


def test_views_are_pooled_and_an_epoch_draws_two_per_photo():
    t = _top(4)
    assert len(t.acts) == 24 and t.cached == 24 and t.per_epoch == 12
    assert torch.equal(t.ys, torch.tensor([0, 1] * 12))  # every view in the order of the labels
    # the probe fits the first view: the photos themselves
    assert torch.equal(t.acts[:6], _top(1).acts)
    epoch = torch.cat(list(t.batches(5)))
    assert len(epoch) == 12 and len(set(epoch.tolist())) == 12 and int(epoch.max()) < 24
    assert t.steps(5) == 3
    # two views: every sample once an epoch, as before views were pooled; one view: the photos once
    assert sorted(torch.cat(list(_top(2).batches(5))).tolist()) == list(range(12))
    assert _top(1).per_epoch == 6


def test_a_resumed_pool_draws_the_epochs_the_uninterrupted_run_would():
    a, b = _top(3, seed=4), _top(3, seed=4)
    first = [torch.cat(list(a.batches(4, epoch=e))) for e in (1, 2, 3)]
    resumed = torch.cat(list(b.batches(4, epoch=3)))
    assert torch.equal(first[2], resumed) and not torch.equal(first[0], first[1])
